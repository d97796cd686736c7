"""The one interleaved timer: its two order rules, continuing a run, and the SpeedUp record."""

import pytest

from lrdlab.measure.interleave import Rounds, interleave
from lrdlab.measure.stats import SpeedUp


def _logging_steps(log: list[str], labels: str):
    return {c: (lambda c=c: log.append(c) or 1.0) for c in labels}


def test_alternate_reverses_every_other_round_and_continues_the_alternation():
    log: list[str] = []
    record = interleave(_logging_steps(log, "ABC"), 3)
    assert "".join(log) == "ABCCBAABC"
    interleave(_logging_steps(log, "ABC"), 1, into=record)  # round 4 of the same run: reversed
    assert "".join(log[9:]) == "CBA" and record.count == 4 and record.times["A"] == [1.0] * 4


def test_shuffle_is_reproducible_and_gives_no_label_a_fixed_slot():
    log: list[str] = []
    interleave(_logging_steps(log, "ABCDE"), 20, order="shuffle")
    firsts = {log[i] for i in range(0, len(log), 5)}
    assert len(firsts) > 2  # a fixed order would always start with A
    again: list[str] = []
    interleave(_logging_steps(again, "ABCDE"), 20, order="shuffle")
    assert again == log


def test_rounds_speedup_pairs_by_round():
    record = Rounds({"a": [2.0, 4.0, 2.0], "b": [1.0, 2.0, 1.0]})
    up = record.speedup("a", "b")
    assert up.median == 2.0 and up.rounds == 3 and up.pct == pytest.approx(100.0)


def test_speedup_text_verdict_and_recorded_form():
    noisy = SpeedUp(1.01, 0.98, 1.05, 9, converged=False)
    assert noisy.verdict == "within noise"
    assert noisy.text(rounds=True) == "+1.0% [-2.0, +5.0], within noise (9 rounds, not converged)"
    assert SpeedUp(0.8, 0.7, 0.9, 5).verdict == "slower"
    back = SpeedUp.from_pct(noisy.to_pct())  # the recorded percent form reads back as the same record
    assert back.median == pytest.approx(noisy.median) and back.ci_low == pytest.approx(noisy.ci_low)
    assert back.rounds == 9 and not back.converged


def test_bad_order_or_rounds_raise():
    with pytest.raises(ValueError, match="order"):
        interleave({"a": lambda: 1.0}, 1, order="fixed")
    with pytest.raises(ValueError, match="rounds"):
        interleave({"a": lambda: 1.0}, -1)
