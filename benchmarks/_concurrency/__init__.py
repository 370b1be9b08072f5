"""Many simultaneous conversations: latency, stalls, CPU and memory per number of calls.

Issue 7: "N simultaneous full conversations (greeting, caller question as real speech,
reply, a barge-in in some calls), with a local stand-in server for the STT and LLM that
answers like an OpenAI-compatible API with a configurable delay (e.g. STT 150 ms, LLM
first token 200 ms then streams a 2-3 sentence answer), and the real local TTS (Piper).
Report per N: greeting first-audio p50/p99, reply latency p50/p99, longest silence inside
an agent utterance, underruns, CPU and RSS. Targets on this 2-core machine: at 60 calls,
reply latency p50 ≤ 700 ms and p99 ≤ 1.2 s (endpointing included), greeting first audio
p99 ≤ 500 ms, no silence > 60 ms inside an utterance; beyond capacity, new calls refused
and calls in progress unaffected."

Three processes besides this one (the orchestrator), all on 127.0.0.1:

* **the server** is the real CLI, ``audiosocket-ai serve --stt openai --llm openai
  --llm-base-url URL --tts piper --metrics-port M --max-calls K`` (``taskset -c 0,1``),
  with ``OPENAI_API_KEY=test`` and ``OPENAI_BASE_URL=URL`` (which is how ``OpenAISTT``
  finds the stand-in: the CLI has no STT base-URL flag). WebRTC VAD, default 400 ms
  endpointing. Restarted for every N, so its counters and RSS high-water mark are per N;
* **the stand-in** (this script, ``--role standin``): an HTTP/1.1 server (trio + h11)
  answering ``/v1/audio/transcriptions`` after ``--stt-delay`` and ``/v1/chat/completions``
  as an SSE stream whose first token comes after ``--llm-first-token`` and then one word
  every ``--llm-token-ms`` (a 3-sentence answer to the question, a 2-sentence one to the
  barge-in); it counts requests in flight per endpoint. ``--replies same`` (the default):
  every call gets the same two texts (REPLY, FOLLOW_UP), which a server caching synthesized
  sentences across calls synthesizes once per run. ``--replies unique``: the honest worst
  case, different text for every request (:class:`UniqueReplies`: same shape and length,
  seeded from ``--seed`` and a request counter, no sentence or synthesis piece used twice in
  a run; the stand-in counts the pieces it sent, cut as the server's ``SentenceSplitter``
  cuts them, and how many repeated). ``--replies same,unique`` runs the sweep once per mode
  (one table each; the refusal runs with the first mode);
* **the callers** (this script, ``--role callers``): one trio process, one task per call
  built on :class:`FakeAsterisk`, one shared ticker that sends every call's 20 ms slin
  frame on an absolute clock (calls spread over 5 phase slots, silence unless the caller
  talks). Calls start evenly over ``--stagger`` s. Each call: waits for the greeting to
  end, pauses 0.3-1.2 s (a person reacting), asks a question (Piper speech pre-rendered
  at 8 kHz by the orchestrator, ~2 s), waits for the reply; a third of the calls barge in
  0.8-1.5 s into the reply with a short phrase and wait for the answer to it, the others
  listen to the end of the reply; then hang up. Every received frame is time-stamped
  (trio clock) and analysed after the run.

Numbers (caller side unless said otherwise):

* greeting first audio: connect → first audible frame (RMS > −50 dBFS);
* reply latency: end of the caller's voice on the wire (found by energy in the PCM; a
  frame sent at T carries [T − 20 ms, T]) → first audible frame of the reply; the same for
  the answer to a barge-in (reported apart);
* silence inside an utterance: the longest run of digital-silence frames (the pacer's
  "nothing to play" frames are exact zeros; Piper's own pauses never are) between the
  first and last sound of one agent utterance, i.e. silence the server inserted. The
  issue's literal measure (gap between audible frames) is reported too, next to the same
  number for the ideal rendering of the same text, because Piper's natural pauses between
  sentences are already ~300 ms below −50 dBFS;
* underruns and late ticks: the server's counters from ``/metrics`` after the calls
  ended (``audiosocket_underrun_ticks_total``, ``audiosocket_late_ticks_total``), and the
  pacing-lateness histogram;
* CPU (cores, i.e. 1.0 = one core busy) and RSS of the server from ``/proc``, sampled
  every 0.5 s; also the callers', the stand-in's and the whole machine's (other users'
  load shows there), and the server's run-queue wait (runnable but no core free);
* the server's own split per reply (endpointing, STT, LLM first token, TTS first audio),
  parsed from its ``turn latency (ms)`` log lines.

Run: ``.venv/bin/python -m benchmarks.concurrency`` or ``.venv/bin/python
benchmarks/concurrency.py`` (``--help`` for the knobs, ``--write-docs`` puts the tables
into docs/benchmarks.md).

Modules, by job: ``constants`` (frame sizes, targets), ``replies`` (the stand-in's answer
texts), ``standin`` (the stand-in process), ``callers`` (the callers process), ``analysis``
(per call and per run, after the calls), ``speech`` (caller speech and reference
renderings), ``processes`` (starting and sampling the server and the stand-in), ``report``
(the markdown) and ``main`` (options, the sweep).
"""

from __future__ import annotations

import os
import sys

from benchmarks.common import ROOT

CODE_ENV = "CONCURRENCY_BENCH_CODE"
"""Set by the orchestrator for its subprocesses: the frozen copy of the package under test."""
# before anything imports audiosocket_ai, so that the frozen copy shadows the working tree
sys.path.insert(0, os.environ.get(CODE_ENV) or str(ROOT))
