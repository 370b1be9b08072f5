"""A custom agent in a few lines: greet with a beep, echo the caller, hang up on '#'.

Run it:  audiosocket-ai serve --agent examples.echo_agent:agent
(from the repository root, or anywhere the module is importable).
"""

from __future__ import annotations

import trio

import audiosocket_ai as asa


async def agent(call: asa.Call) -> None:
    await call.play(asa.tone_pcm(880, 150, call.rate))  # a short beep: "I'm listening"

    async def hang_up_on_hash() -> None:
        async for digit in call.dtmf():
            if digit == "#":
                await call.hangup()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_up_on_hash)
        async with call.playback() as out:
            async for frame in call.audio():
                await out.write(frame.pcm, frame.rate)
