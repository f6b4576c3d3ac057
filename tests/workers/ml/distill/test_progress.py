"""Progress plumbing: the stage clock that times a run's stages from its reports."""

from __future__ import annotations

import pytest

from workers.ml.distill import progress as progress_module
from workers.ml.distill.progress import Progress, StageClock


def test_it_times_each_stage_from_its_first_report_to_the_next_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    seen: list[Progress] = []
    clock = StageClock(seen.append)

    def at(moment: float, stage: str, step: int = 0) -> None:
        now[0] = moment
        clock(Progress(stage, step, 2))  # type: ignore[arg-type]

    at(101.0, "loading")
    at(104.0, "loading", 1)
    at(110.0, "generating")
    at(130.0, "training")
    at(131.5, "training", 1)
    at(170.0, "evaluating")
    now[0] = 175.25
    assert clock.snapshot() == {"loading": 9.0, "generating": 20.0, "training": 40.0, "evaluating": 5.2}
    stages = ["loading", "loading", "generating", "training", "training", "evaluating"]
    assert [report.stage for report in seen] == stages  # every report is passed on
    # A stage seen again adds up; "done" is no stage of work.
    at(180.0, "training")
    at(185.0, "done")
    now[0] = 200.0
    final = clock.snapshot()
    assert (final["training"], final["evaluating"]) == (45.0, 10.0)
    assert "done" not in final
