"""bench/gpu_distill.py is the one script a lent GPU runs: its smoke test keeps it working without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.scripts import run_bench


def test_it_runs_teacher_and_training_eager_and_compiled_and_reports_each(tmp_path: Path) -> None:
    out = tmp_path / "gpu_distill.json"
    result = run_bench("bench/gpu_distill.py", "--tiny", "--cuda-graphs", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["partial"] is False  # written after each pass with "partial": true, then whole at the end
    assert result.stdout.count("done: {'compile'") == 5  # two teacher passes, three trainings, said as they end
    eager, compiled, graphs = report["runs"]
    assert (eager["compile"], compiled["compile"], graphs["compile"]) == ("off", "on", "on+graphs")
    # The same LoRA init and data: compilation changes the speed, not the training.
    assert compiled["first_loss"] == eager["first_loss"]
    assert abs(compiled["last_loss"] - eager["last_loss"]) < 1e-4
    # CUDA graphs (skipped by inductor on a CPU) change neither; their speed-up against "on" is reported.
    assert (graphs["first_loss"], graphs["last_loss"]) == pytest.approx((compiled["first_loss"], compiled["last_loss"]))
    assert report["cuda_graphs_steady_speedup"] > 0
    # The run counts inductor's fallbacks from CUDA graphs: on a CPU it skips the capture, and says so.
    assert (eager["cudagraph_skips"], compiled["cudagraph_skips"]) == (0, 0)
    assert graphs["cudagraph_skips"] >= 1
    assert "CUDA graphs: inductor fell back" in result.stdout
    assert report["compiled_steady_speedup"] > 0
    assert report["tokens"] == 8192
    assert all(run["steady_tokens_per_s"] > 0 and run["train_s"] > 0 for run in report["runs"])
    assert 0 < report["mfu"] < 1
    # The steady rates leave the first batch and step (compilation) out; a tiny CPU run's are close to its wall
    # rates, so only their presence and range are checked here.
    assert 0 < report["mfu_steady"] < 1
    assert report["steady_tokens_per_s"] > 0
    assert "steady (faster runs)" in result.stdout
    assert "training, compile on" in result.stdout
    teacher_eager, teacher_compiled = report["teacher_runs"]
    assert (teacher_eager["compile"], teacher_compiled["compile"]) == ("off", "on")
    assert all(run["steady_tokens_per_s"] > 0 for run in report["teacher_runs"])
    # Compiled or not, the teacher names the same most likely tokens (fp32 on a CPU: up to rounding ties).
    assert report["teacher_top1_agreement"] > 0.99
    assert "teacher, compile on" in result.stdout
    assert report["failures"] == {}
    # One teacher batch and one training micro-batch profiled: where a lent GPU's time goes, op by op.
    for unit in ("teacher_batch", "train_micro_batch"):
        profile = report["profile"][unit]
        assert profile["wall_ms"] > 0
        assert profile["aten_ops"] > 0
        assert any(entry["name"] == "aten::mm" for entry in profile["top"]), profile["top"]
    assert report["profile"]["train_micro_batch"]["aten_ops"] > report["profile"]["teacher_batch"]["aten_ops"]
    assert "profile: train micro batch" in result.stdout
