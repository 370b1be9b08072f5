"""Turn-taking on real phone lines (issue 13): the code behind ``python -m benchmarks.turn_taking``.

One module per job: ``recipe`` (the scripted calls, deterministic from a seed, and their
hash), ``render`` (caller voices with espeak-ng, noises with sox, mixing, the cache),
``caller`` (one live call over AudioSocket: the line, echo, the script), ``metrics`` (pure
functions on what the caller received), ``server`` (the ``audiosocket-ai serve`` process
and its log), ``report`` (the per-class tables) and ``main`` (options and the run).
"""
