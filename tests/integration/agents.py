"""Tiny custom agents for the integration tests, served as a user serves their own:
``audiosocket-ai serve --agent tests.integration.agents:transfer_agent`` (with the
repository root importable, e.g. on ``PYTHONPATH``).

They decide deterministically and at once, so a test of the dialplan side (what happens
after ``AudioSocket()`` returns) needs no speech models and takes about a second.
"""

from __future__ import annotations

import audiosocket_ai as asa

TRANSFER_TARGET = "operator"
TRANSFER_TONE_HZ = 700.0
TRANSFER_TONE_MS = 300


async def transfer_agent(call: asa.Call) -> None:
    """Decide to transfer to ``operator`` straight away (as the assistant does when the
    caller presses 0), play a short tone ("one moment"), then hang up: ``AudioSocket()``
    returns and the dialplan reads the target from the status endpoint."""
    call.outcome["transfer"] = TRANSFER_TARGET
    await call.play(asa.tone_pcm(TRANSFER_TONE_HZ, TRANSFER_TONE_MS, call.rate))
    await call.hangup()


INJECTED_TARGET = "ai-agent-8k,s"
"""What a prompt-injected model once named: another context (the server refuses it; this
agent writes it into the outcome directly, as a compromised server might)."""


async def injected_transfer_agent(call: asa.Call) -> None:
    """Write a transfer target the server would never allow straight into the outcome, to
    show that the shipped dialplan does not trust what it reads either."""
    call.outcome["transfer"] = INJECTED_TARGET
    await call.play(asa.tone_pcm(TRANSFER_TONE_HZ, TRANSFER_TONE_MS, call.rate))
    await call.hangup()


CONTEXT_TONE_HZ = 500.0


async def context_agent(call: asa.Call) -> None:
    """Show what the dialplan posted: the greeting it would say (``greeting`` in the outcome,
    also logged), and a transfer to the context's ``transfer`` key if it has one; then a
    short tone and a hangup."""
    from audiosocket_ai.context import render

    greeting = render("Hello {caller_name|there}, you dialled {exten|nothing}.", call.context)
    call.outcome["greeting"] = greeting
    if call.context.get("transfer"):
        call.outcome["transfer"] = call.context["transfer"]
    await call.play(asa.tone_pcm(CONTEXT_TONE_HZ, TRANSFER_TONE_MS, call.rate))
    await call.hangup()
