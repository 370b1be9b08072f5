"""The level gate: pauses far below an utterance's voice, whatever the VAD says."""

from __future__ import annotations

from audiosocket_ai.agents.assistant.level_gate import LEVEL_GATE_MIN_FRAMES, LevelGate


def test_audio_far_below_the_voice_is_a_pause_once_the_voice_is_known() -> None:
    gate = LevelGate()
    for _ in range(LEVEL_GATE_MIN_FRAMES - 2):
        gate.add(-20.0, 20.0, None)
    assert gate.add(-45.0, 20.0, None) == 0.0, "the voice's level is not known yet (14 frames): no pause"
    gate = LevelGate()
    for _ in range(LEVEL_GATE_MIN_FRAMES):
        gate.add(-20.0, 20.0, None)
    assert [gate.add(-35.0, 20.0, None) for _ in range(3)] == [20.0, 40.0, 60.0], "15 dB below: a pause"
    assert gate.add(-25.0, 20.0, None) == 0.0, "5 dB below the voice: talking"
    assert gate.level_db == -20.0 and gate.current_db is not None


def test_a_pause_ends_when_the_caller_talks_again_softer_until_the_vad_hears_the_next() -> None:
    gate = LevelGate()
    for _ in range(LEVEL_GATE_MIN_FRAMES):
        gate.add(-10.0, 20.0, None)  # "Hi," said loud
    for _ in range(5):
        gate.add(-55.0, 20.0, 100.0)  # a pause, which the VAD hears too
    assert gate.quiet_ms == 100.0
    # softer speech: still 13 dB below "Hi," but 32 dB above the pause, the VAD hearing speech
    assert [gate.add(-23.0, 20.0, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert gate.add(-23.0, 20.0, 20.0) == 20.0, "the VAD hears a pause: the gate counts again"


def test_a_room_that_keeps_the_vad_in_speech_still_makes_a_pause() -> None:
    gate = LevelGate()
    for _ in range(LEVEL_GATE_MIN_FRAMES):
        gate.add(-18.0, 20.0, 0.0)
    room = [-40.0, -34.0, -38.0, -33.0] * 5  # a TV: it moves, but not 20 dB above its own gaps
    assert gate.add(room[0], 20.0, 0.0) == 20.0
    for level in room[1:]:
        quiet = gate.add(level, 20.0, 0.0)
    assert quiet == 20.0 * len(room)
