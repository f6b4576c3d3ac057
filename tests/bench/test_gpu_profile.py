"""bench/gpu_profile.py looks inside one batch on a lent GPU: its smoke test keeps it working without one."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.scripts import run_bench


def test_it_profiles_teacher_and_training_and_compares_top_k_and_loss_variants(tmp_path: Path) -> None:
    out = tmp_path / "gpu_profile.json"
    result = run_bench("bench/gpu_profile.py", "--tiny", "--out", str(out))
    report = json.loads(out.read_text())

    assert report["failures"] == {}
    # Every top-k variant must pick the values torch.topk picks, or its time means nothing.
    assert len(report["topk"]) >= 5
    assert all(entry["same_values"] for entry in report["topk"]), report["topk"]
    assert all(entry["ms"] > 0 for entry in report["topk"])
    eager_loss, compiled_loss = report["loss"]
    assert (eager_loss["variant"], compiled_loss["variant"]) == ("eager (product)", "compiled")
    assert compiled_loss["loss_diff"] < 1e-4
    assert compiled_loss["grad_max_diff"] < 1e-6
    for unit in ("teacher_eager", "teacher_compiled", "train_eager", "train_compiled", "train_graphs"):
        assert report[unit]["wall_ms"] > 0, unit
        assert any(entry["name"] == "aten::mm" for entry in report[unit]["top"]), unit
    # Compiled layers run as fused graphs: far fewer aten ops than the eager layers' small kernels.
    assert report["train_compiled"]["aten_ops"] < report["train_eager"]["aten_ops"]
    assert "profile: train compiled" in result.stdout
    assert "profile: train graphs" in result.stdout
