"""Full conversations with cloud providers (their fakes): hundreds of calls on one machine.

Issue 14: "full conversations with the cloud-provider fakes (streaming STT, LLM and TTS
with realistic timings, e.g. STT final 150 ms after the endpoint, first token 200 ms,
first audio 150 ms) at N = 100, 200, 400 on 2 cores, reporting reply latency p50/p99,
inserted silence, pacing lateness, CPU per call-second and RSS."

Three kinds of process, all on 127.0.0.1, none pinned (the machine's cores are shared):

* **the fakes** (this script, ``--role fakes``, ``--fakes-procs`` K processes sharing one
  port with SO_REUSEPORT, the kernel spreading the server's connections over them: one event
  loop lags up to 0.8–1.3 s (max; p99 45–100 ms) from N≈200): ``tests/fakes``' :class:`FakeOpenAI`, a
  real HTTP/1.1 server speaking OpenAI's wire formats (multipart transcription, chat
  completions as an SSE stream, speech as a chunked 24 kHz PCM body), with per-endpoint
  delays (``HttpFake.path_delays``): transcription after ``--stt-ms``, the chat's first
  token after ``--llm-first-token-ms`` then a word every ``--llm-token-ms``, speech's
  first audio after ``--tts-first-audio-ms`` (then 100 ms of audio per ``--tts-chunk-ms``).
  Every chat request gets new text (``_concurrency.replies.UniqueReplies``: three
  sentences of 25-30 words), so the server's cache of synthesized sentences cannot help;
  the fake's speech is a tone of 60 ms per character;
* **the server**: the real command, ``audiosocket-ai serve --stt openai --llm openai
  --tts openai [--workers W]`` with ``OPENAI_BASE_URL`` pointing at the fakes, so the
  real provider clients (``OpenAISTT``, ``OpenAIChatLLM``, ``OpenAITTS``, their pooled
  httpx connections) do the talking. Fallbacks, VAD and endpointing as configured by
  default. Restarted for every run;
* **the callers**: this process, one thread, plain non-blocking sockets and one epoll
  (the echo benchmark's generator design): every call sends a 20 ms slin frame on an
  absolute clock (calls spread over 1 ms slots), line noise unless it talks (a real line is
  never digital zero, and the server's echo canceller and noise handling take cheaper paths on
  exact zeros): Gaussian noise at ``--line-noise-dbfs`` RMS (−70; ``none``: all-zero frames as
  before), 4 s of frames pre-generated from ``--seed`` and cycled from each call's own offset,
  and under the questions too (where the voice ends is still found in the clean PCM). Calls start
  evenly over ``--stagger`` s. Each call waits for the greeting to end (0.6 s quiet),
  pauses 0.3-1.2 s, asks a question (Piper's voice at 8 kHz, ~2 s), hears the reply out
  (``--reply-quiet`` s of quiet ends it), and does that ``--turns`` times, then hangs up.

Numbers, per run (caller side unless said otherwise):

* **reply latency**: end of the caller's voice on the wire (found by energy in the PCM; a
  frame sent at T carries [T − 20 ms, T]) → first non-silent frame of the reply;
* **inserted silence**: inside one agent utterance (greeting or reply: from its first to
  its last non-silent frame), the longest run of exact-zero frames, i.e. the pacer's
  "nothing to play" frames (the fake's tone has no pauses of its own);
* **pacing lateness**: the server's own histogram (``audiosocket_pacing_lateness_seconds``,
  summed over workers) for the run, p99 by Prometheus' ``histogram_quantile``; and the
  callers' view, |inter-arrival − 20 ms| of the agent's frames;
* **CPU per call-second**: the server's CPU (parent and workers, /proc) over the run,
  divided by the call-seconds carried; **RSS**: peak of the server's processes summed;
* the server's own split per reply (``turn latency (ms)`` log lines);
* **fakes lag**: each fakes process is one trio loop streaming its share of the calls' SSE and
  audio chunks; if one falls behind, the reply latency includes its queueing. A task in each
  sleeps 10 ms on absolute deadlines and records how late it wakes (``benchmarks.common.loop_lag``);
  the callers' side reads and resets that window at ``GET /bench/loop`` on each process's own
  control port at the start and the end of each run: the worst process's p50/p99/max, wakes a
  whole period late (summed), and the fakes' CPU (all processes).

Run: ``.venv/bin/python -m benchmarks.cloud_conversations --calls 100,200,400 --workers 1,2``
(``--help`` for the knobs; ``--write-docs`` puts the tables into docs/benchmarks.md).
"""
