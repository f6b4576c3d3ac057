"""bench/judge.py measures whether a teacher can judge; its smoke test keeps the script working."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.scripts import run_bench


def test_it_grades_right_and_wrong_answers_with_the_products_judge(tmp_path: Path) -> None:
    out = tmp_path / "judge.json"
    result = run_bench("bench/judge.py", "--quick", "--threads", "1", "--out", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["teacher"] == "tiny:llama-2l"
    assert len(row["grades_right"]) == len(row["grades_wrong"]) == row["items"] == 20
    readable = sum(grade is not None for grade in row["grades_right"] + row["grades_wrong"])
    assert row["readable_share"] == readable / 40
    assert "tiny:llama-2l" in result.stdout
