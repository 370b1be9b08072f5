"""An utterance's echo evidence: an echo-like onset, then a voice louder than any echo."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from audiosocket_ai.agents.assistant.echo_evidence import NOT_ECHO_FRAMES, EchoEvidence
from audiosocket_ai.agents.assistant.turns import CallerLevel


def evidence(*, echo_likely: bool = False, agent_db: float | None = -10.0,
             speaking: bool = True) -> tuple[EchoEvidence, Any]:
    echo: Any = SimpleNamespace(echo_likely=echo_likely, agent_db=agent_db)
    return EchoEvidence(echo, CallerLevel(), lambda: speaking), echo


def test_an_onset_far_below_the_agent_is_its_echo_until_it_goes_on_louder_than_any_echo() -> None:
    judge, _ = evidence()
    assert judge.onset(-40.0), "30 dB below the agent: as quiet as only its echo is"
    assert not judge.frame(-38.0), "still that quiet"
    louder = [judge.frame(-12.0) for _ in range(NOT_ECHO_FRAMES + 1)]
    assert louder == [False] * (NOT_ECHO_FRAMES - 1) + [True, False], "the caller, once, after the frames it takes"
    assert not judge.onset_echo


def test_an_onset_louder_than_any_echo_is_the_callers_whatever_the_canceller_says() -> None:
    judge, _ = evidence(echo_likely=True)
    assert not judge.onset(-12.0), "within 6 dB of the agent: no line returns that much"
    assert judge.onset(-30.0), "the canceller hears an echo, and it is quiet enough to be one"


def test_the_echo_share_counts_the_frames_the_canceller_took_for_the_echo() -> None:
    judge, echo = evidence()
    judge.onset(-20.0)
    echo.echo_likely = True
    for _ in range(3):
        judge.frame(-30.0)
    echo.echo_likely = False
    judge.frame(-30.0)
    assert judge.share(4) == 0.75 and judge.share(0) == 0.0
    judge.onset(-20.0)
    assert judge.share(4) == 0.0, "a new utterance counts afresh"


def test_without_a_canceller_or_while_the_agent_is_silent_nothing_is_an_echo() -> None:
    quiet, _ = evidence(speaking=False)
    assert not quiet.onset(-40.0)
    none = EchoEvidence(None, CallerLevel(), lambda: True)
    assert not none.onset(-40.0) and not none.frame(-40.0) and none.share(10) == 0.0
