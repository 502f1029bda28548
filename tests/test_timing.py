"""core/timing.py: the one interleaved timer of the benches and the INT8 check."""

from __future__ import annotations

import pytest

from hepascope.core.timing import interleaved_ms


def test_every_run_is_timed_as_often_as_asked_in_turns_that_rotate() -> None:
    log: list[str] = []
    runs = {"a": [lambda: log.append("a0"), lambda: log.append("a1")],
            "b": [lambda: log.append("b0")]}
    ms = interleaved_ms(runs, 5, chunk=2, warmup=1, settle=1)
    assert {k: len(v) for k, v in ms.items()} == {"a": 5, "b": 5}
    assert all((v >= 0).all() for v in ms.values())
    assert log[:2] == ["a0", "b0"]  # warm-up: each first copy once
    # round 0: a then b, round 1: b then a (copy a1), round 2: a0 again, b; each turn one
    # untimed call, then the timed ones (the last round has 1 call left)
    assert log[2:] == ["a0"] * 3 + ["b0"] * 3 + ["b0"] * 3 + ["a1"] * 3 + ["a0"] * 2 + ["b0"] * 2


@pytest.mark.parametrize("kwargs", [{"calls": 0}, {"chunk": 0}, {"warmup": -1},
                                    {"pause_s": -0.1}])
def test_bad_arguments_are_refused(kwargs: dict[str, float]) -> None:
    args = {"calls": 3, **kwargs}
    with pytest.raises(ValueError):
        interleaved_ms({"a": [lambda: None]}, **args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        interleaved_ms({"a": []}, 3)
