"""Progress lines: when they come, what they say (rate, ETA), on a fake clock."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from test_training_loop import make_loop

from mtkd import progress as progress_module
from mtkd.config import TrainingConfig
from mtkd.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m00s"),
                                               (75, "1m15s"), (3600, "1h00m00s"),
                                               (4000, "1h06m40s"), (-3, "0s")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_first_line_early_then_every_30_s(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    watch = Progress("soft m000", 1000, "ex", clock=clock)
    logged_at = []
    with caplog.at_level(logging.INFO, logger="mtkd.progress"):
        for i in range(1, 101):  # 10 examples per second, for 100 s
            clock.now += 1.0
            if watch.update(10 * i):
                logged_at.append(clock.now - 1000.0)
    # First after 10 s (a slow run says so in its first minute), then every 30 s, and the
    # final line at 100%.
    assert logged_at == [10.0, 40.0, 70.0, 100.0]
    first = caplog.records[0].getMessage()
    assert first == "[soft m000] 100/1000 examples ( 10%) | 10.0 ex/s | eta 1m30s", first
    assert caplog.records[-1].getMessage().startswith("[soft m000] 1000/1000 examples (100%)")


def test_rate_excludes_pauses_and_counts_from_resume(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    # Resumed at step 40 of 100: the rate counts the steps of this run only.
    watch = Progress("train", 100, "step", clock=clock, start_done=40)
    clock.now += 10.0
    watch.pause(5.0)  # a 5 s evaluation inside the 10 s
    watch.done = 50
    assert watch.rate() == pytest.approx(10 / 5.0)
    assert watch.eta_seconds() == pytest.approx(50 / 2.0)
    with caplog.at_level(logging.INFO, logger="mtkd.progress"):
        watch.emit("epoch 1 loss 0.5000")
    assert caplog.records[0].getMessage() == (
        "[train] 50/100 steps ( 50%) | epoch 1 loss 0.5000 | 2.0 step/s | eta 25s")


def test_no_progress_no_eta() -> None:
    clock = Clock()
    watch = Progress("x", 10, clock=clock)
    clock.now += 20
    assert watch.eta_seconds() is None


def test_the_training_loop_reports_at_least_every_30_s(tiny_encoder_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """However slow the steps, the loop logs a line at least every 30 s, not only every
    log_every steps. On the fake clock each step takes 6 s (the loop asks once per step
    whether a line is due): first line at 12 s (step 2), then every 5 steps (30 s)."""
    class SlowTime:
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            cls.now += 6.0
            return cls.now

    monkeypatch.setattr(progress_module, "time", SlowTime)
    config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3)
    loop = make_loop(tiny_encoder_dir, config, log_every=10**6)
    with caplog.at_level(logging.INFO, logger="mtkd.progress"):
        loop.run(seed=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "mtkd.progress"]
    steps = [int(m[1]) for line in lines if (m := re.match(r"\[train\] (\d+)/", line))]
    assert loop.total_steps == 10
    assert steps == [2, 7, 10], lines
