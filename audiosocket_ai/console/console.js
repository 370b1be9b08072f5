// audiosocket-ai live console: one server-sent event stream, rendered into the page. No build, no CDN.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
  const token = params.get("token");
  const calls = new Map();   // uuid -> view of a call in progress
  let recent = [];           // finished calls, oldest first
  const healths = new Map(); // worker (null: a single server) -> its last health event
  let capacity = null;
  let selected = params.get("call");
  let dirty = false;

  const short = (uuid) => (uuid || "").slice(0, 8);
  const who = (view) => [view.persona, view.agent].filter(Boolean).join(" / ") || "–";
  const seconds = (s) => { s = Math.max(0, Math.round(s)); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; };
  const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  };

  function fresh(view) {
    return Object.assign({ lines: [], turns: [], barge_ins: 0, underruns: 0, state: "listening" }, view);
  }
  function find(uuid) { return calls.get(uuid) || recent.find((v) => v.call === uuid); }

  function apply(event) {
    const view = event.call ? calls.get(event.call) : null;
    switch (event.type) {
      case "workers":  // serve --workers N: one snapshot per worker follows
        calls.clear(); recent = []; healths.clear();
        break;
      case "snapshot": {
        const w = event.worker ?? null;  // a worker's snapshot replaces only that worker's calls
        for (const [uuid, v] of calls) if ((v.worker ?? null) === w) calls.delete(uuid);
        for (const v of event.calls) calls.set(v.call, fresh(Object.assign(v, { worker: w })));
        recent = recent.filter((v) => (v.worker ?? null) !== w).concat(event.recent.map((v) => fresh(Object.assign(v, { worker: w }))));
        recent.sort((a, b) => (a.ended || 0) - (b.ended || 0));
        if (recent.length > 25) recent = recent.slice(-25);
        health(event.health);
        break;
      }
      case "resync": break;  // a snapshot follows
      case "health": health(event); break;
      case "call_started":
        calls.set(event.call, fresh({ call: event.call, agent: event.agent, persona: event.persona, started: event.t,
          worker: event.worker ?? null }));
        if (!selected) selected = event.call;
        break;
      case "call_ended":
        if (view) {
          calls.delete(event.call);
          Object.assign(view, { state: "ended", ended: event.t, end_reason: event.end_reason, duration: event.duration,
            recording: Boolean(event.recording) });
          recent.push(view);
          if (recent.length > 25) recent.shift();
        }
        break;
      case "transcript":
        if (view) {
          view.lines.push(event);
          if (view.lines.length > 100) view.lines.shift();
        }
        break;
      case "turn":
        if (view) { view.turns.push(event); if (view.turns.length > 50) view.turns.shift(); }
        break;
      case "barge_in":
        if (view) { view.barge_ins += 1; view.state = "listening"; }
        break;
      case "state":
        if (view) view.state = event.state;
        break;
      default: return;
    }
    dirty = true;
  }

  function health(h) {
    healths.set(h.worker ?? null, h);
    const all = [...healths.values()];  // with workers: the group's sums, worst pacing, ready when all are
    const sum = (key) => all.reduce((total, x) => total + (x[key] || 0), 0);
    const pacing = all.map((x) => x.pacing_p99_ms).filter((v) => v !== null && v !== undefined);
    capacity = sum("capacity");  // (the calls themselves are counted live, from their events)
    $("h-ready").textContent = all.every((x) => x.ready) ? "yes" : (all.some((x) => x.overloaded) ? "no (overloaded)" : "no");
    $("h-pacing").textContent = ms(pacing.length ? Math.max(...pacing) : null);
    $("h-consoles").textContent = String(Math.max(...all.map((x) => x.consoles || 0)));
    const engines = all.map((x) => x.inference).filter(Boolean);  // local engines' backlog, if any
    $("h-inference-box").hidden = engines.length === 0;
    if (engines.length) {
      const waiting = engines.reduce((n, x) => n + x.waiting, 0), overdue = Math.max(...engines.map((x) => x.overdue_ms));
      $("h-inference").textContent = overdue > 0 ? `${waiting} waiting, ${ms(overdue)} late` : `${waiting} waiting`;
    }
    for (const [uuid, live] of Object.entries(h.per_call || {})) {
      const view = calls.get(uuid);
      if (view) { view.underruns = live.underruns; if (live.state) view.state = live.state; }
    }
    dirty = true;
  }

  function callButton(uuid) {
    const button = el("button", { type: "button", title: uuid, "aria-label": `Follow call ${uuid}`, text: short(uuid) });
    button.addEventListener("click", () => { selected = uuid; dirty = true; });
    return button;
  }

  function renderCalls(now) {
    const body = $("calls").tBodies[0];
    body.replaceChildren(...[...calls.values()].map((v) => el("tr", { class: v.call === selected ? "selected" : "", "data-call": v.call },
      el("td", {}, callButton(v.call)), el("td", { text: who(v) }), el("td", { text: seconds(now - v.started) }),
      el("td", {}, el("span", { class: `state ${v.state}`, text: v.state })),
      el("td", { text: String(v.barge_ins) }), el("td", { text: String(v.underruns) }))));
    $("no-calls").hidden = calls.size > 0;
    if (capacity !== null) $("h-calls").textContent = `${calls.size} / ${capacity}`;
  }

  function renderRecent() {
    const body = $("recent").tBodies[0];
    body.replaceChildren(...[...recent].reverse().map((v) => el("tr", { class: v.call === selected ? "selected" : "", "data-call": v.call },
      el("td", {}, callButton(v.call)), el("td", { text: who(v) }),
      el("td", { text: v.duration === undefined || v.duration === null ? "–" : seconds(v.duration) }),
      el("td", { text: v.end_reason || "–" }),
      el("td", { text: v.ended ? new Date(v.ended * 1000).toLocaleTimeString() : "–" }))));
    $("no-recent").hidden = recent.length > 0;
  }

  function line(l) {
    const tags = [];
    if (l.interrupted) tags.push(el("span", { class: "tag cut", text: "interrupted" }));
    if (l.backchannel) tags.push(el("span", { class: "tag", text: "backchannel" }));
    if (l.dtmf) tags.push(el("span", { class: "tag", text: "keys" }));
    const classes = [l.who, l.interrupted ? "interrupted" : "", l.backchannel ? "backchannel" : ""].join(" ").trim();
    return el("li", { class: classes }, el("span", { class: "who", text: l.who === "agent" ? "Agent" : "Caller" }),
      el("span", { class: "text", text: l.text }), ...tags);
  }

  const STAGES = [["endpointing", "endpointing", "endpoint"], ["stt", "stt", "STT"],
    ["llm_first_token", "llm", "LLM first token"], ["tts_first_audio", "tts", "TTS first audio"],
    ["playout", "playout", "playout"]];

  function timing(turn, index) {
    // the rest of the time to first audio (queued behind audio, a held reply, the first tick) is "playout"
    const t = Object.assign({}, turn.timings || {});
    const staged = STAGES.slice(0, 4).reduce((sum, [key]) => sum + (t[key] || 0), 0);
    const first = t.end_of_speech_to_first_audio;
    t.playout = first === null || first === undefined ? null : Math.max(0, first - staged);
    const total = STAGES.reduce((sum, [key]) => sum + (t[key] || 0), 0) || 1;
    const bar = el("div", { class: "bar", role: "img",
      "aria-label": STAGES.map(([key, , label]) => `${label} ${ms(t[key])}`).join(", ") });
    for (const [key, cls] of STAGES) {
      if (t[key]) bar.append(el("span", { class: `seg ${cls}`, style: `width:${(100 * t[key] / total).toFixed(1)}%` }));
    }
    const numbers = el("div", { class: "numbers", text: `reply ${index + 1}: ` +
      STAGES.map(([key, , label]) => `${label} ${ms(t[key])}`).join(" · ") +
      ` · to first audio ${ms(t.end_of_speech_to_first_audio)}${turn.preemptive ? " (pre-emptive)" : ""}` });
    return el("li", { "data-total": String(t.end_of_speech_to_first_audio ?? "") }, bar, numbers);
  }

  let shownRecording = null;
  function renderRecording(view) {  // a finished call's stereo recording (caller left, agent right)
    const want = view && view.state === "ended" && view.recording ? view.call : null;
    if (want === shownRecording) return;
    shownRecording = want;
    const box = $("recording");
    box.hidden = !want;
    if (!want) { box.replaceChildren(); return; }
    const src = `/console/recordings/${want}.wav` + (token ? `?token=${encodeURIComponent(token)}` : "");
    const audio = el("audio", { controls: "", preload: "metadata", src, "aria-label": `Recording of call ${want}` });
    const note = el("p", { class: "legend", text: "Caller on the left channel, agent on the right." });
    audio.addEventListener("error", () => { note.textContent = "No recording of this call (recording.record_dir)."; });
    box.replaceChildren(el("h3", { text: "Recording" }), audio, note);
  }

  let shownCall = null, shownLines = 0, shownTurns = 0;
  function renderCall() {
    const view = selected ? find(selected) : null;
    const transcript = $("transcript"), timings = $("timings");
    renderRecording(view);
    if (!view) {
      $("call-title").textContent = "Call";
      $("call-info").textContent = selected ? "That call is no longer shown." : "Choose a call to follow it live.";
      transcript.replaceChildren(); timings.replaceChildren(); shownCall = null;
      return;
    }
    $("call-title").textContent = `Call ${short(view.call)}`;
    $("call-info").textContent = `${view.call} · ${who(view)} · ` +
      (view.state === "ended" ? `ended: ${view.end_reason || "?"}` : view.state);
    if (shownCall !== view.call || view.lines.length < shownLines || view.turns.length < shownTurns) {
      transcript.replaceChildren(); timings.replaceChildren(); shownLines = shownTurns = 0; shownCall = view.call;
    }
    // append only what is new, so a screen reader announces just the new lines (aria-live)
    for (const l of view.lines.slice(shownLines)) transcript.append(line(l));
    view.turns.slice(shownTurns).forEach((turn, i) => timings.append(timing(turn, shownTurns + i)));
    shownLines = view.lines.length; shownTurns = view.turns.length;
    transcript.scrollTop = transcript.scrollHeight;
  }

  function render() {  // at most 10 times a second, however many events came in
    if (!dirty) return;
    dirty = false;
    const now = Date.now() / 1000;
    renderCalls(now); renderRecent(); renderCall();
  }

  function connect() {
    const url = "/console/events" + (token ? `?token=${encodeURIComponent(token)}` : "");
    const source = new EventSource(url);
    source.onopen = () => { $("link").textContent = "live"; $("link").className = "link"; };
    source.onerror = () => {
      $("link").className = "link down";
      $("link").textContent = source.readyState === EventSource.CLOSED
        ? "refused: open this page as /console/#token=YOUR_TOKEN (server.console_token)" : "disconnected: retrying…";
    };
    source.onmessage = (message) => apply(JSON.parse(message.data));
  }

  setInterval(() => { dirty = true; }, 1000);  // durations tick
  setInterval(render, 100);
  connect();
})();
