"""Can a teacher judge? Its 1–5 grades of right and wrong answers to the same questions, with the product's prompt.

Recipe `qa` lets the teacher grade each blind answer against the reference (workers/ml/distill/qa_judge.py), and
under `evaluation.teacher_judge=auto` only endpoint teachers and local ones of 1B+ parameters do. This measures
that line: each of `ITEMS` (a question, its reference answer, a right answer in other words and a plausible wrong
one) is judged twice through `judge_answers`, and a judge is useful when it grades the right answer above the
wrong one (pairwise accuracy; a tie counts half, so chance is 50%).

    python bench/judge.py                                  # the packaged SmolLM2-135M-Instruct (~2 min)
    python bench/judge.py --teacher hf:/models/qwen2.5-1.5b-instruct --model-root /models
    python bench/judge.py --endpoint http://host:8000/v1 --endpoint-model NAME   # key from $OPENAI_API_KEY
    python bench/judge.py --quick                          # a tiny random model: a smoke test (< 1 minute)

The packaged Gemma-3-270M is a base model without a chat template: it cannot be a qa teacher, so it is not
measured. Writes bench/results/judge.json (or judge-quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.ml.catalog import CatalogConfig, default_cache_dir, load_model
from workers.ml.distill.config import EndpointTeacherConfig
from workers.ml.distill.qa_judge import judge_answers
from workers.ml.distill.teachers import EndpointTeacher, LocalTeacher, Teacher

# (question, reference, right answer in other words, wrong but plausible answer)
ITEMS = (
    ("What is the capital of France?", "Paris is the capital of France.", "It is Paris.", "It is Lyon."),
    ("How many days are in a leap year?", "A leap year has 366 days.", "366 days.", "365 days."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide.", "CO2.", "Oxygen."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote it.", "Shakespeare.", "Charles Dickens."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius.", "It boils at 100 °C.", "50 °C."),
    ("How many continents are there?", "There are seven continents.", "Seven.", "Five."),
    ("What is the largest planet of the solar system?", "Jupiter is the largest planet.", "Jupiter.", "Mars."),
    ("Which keyword defines a function in Python?", "The def keyword.", "You use def.", "You use func."),
    ("What does len() return for a list?", "The number of items in the list.", "How many elements it has.",
     "The memory size of the list in bytes."),
    ("Which exception does 1/0 raise in Python?", "ZeroDivisionError.", "It raises ZeroDivisionError.",
     "It raises ValueError."),
    ("What does the break statement do in a loop?", "It ends the innermost loop at once.",
     "It exits the loop immediately.", "It skips to the next iteration of the loop."),
    ("Are Python strings mutable?", "No, strings are immutable.", "No, they cannot be changed in place.",
     "Yes, you can change their characters in place."),
    ("What is the chemical symbol of gold?", "Au.", "Its symbol is Au.", "Its symbol is Ag."),
    ("How many minutes are in an hour?", "Sixty minutes.", "60.", "100."),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees Fahrenheit.", "32 °F.", "0 °F."),
    ("Which organ pumps blood through the body?", "The heart.", "The heart does.", "The liver does."),
    ("What does HTTP status 404 mean?", "The resource was not found.", "Not found.", "The server crashed."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci.", "Da Vinci painted it.", "Michelangelo painted it."),
    ("What is 7 times 8?", "56.", "Fifty-six.", "54."),
    ("Which ocean is the largest?", "The Pacific Ocean.", "The Pacific.", "The Atlantic."),
)  # fmt: skip


def measure(teacher: Teacher) -> dict[str, Any]:
    questions = [item[0] for item in ITEMS]
    references = [item[1] for item in ITEMS]
    answers = {"right": [item[2] for item in ITEMS], "wrong": [item[3] for item in ITEMS]}
    started = time.perf_counter()
    judgement = judge_answers(teacher, nullcontext, questions, references, answers)
    seconds = time.perf_counter() - started
    right, wrong = judgement.grades["right"], judgement.grades["wrong"]
    wins = [
        1.0 if r > w else 0.5 if r == w else 0.0
        for r, w in zip(right, wrong, strict=True)
        if r is not None and w is not None
    ]
    means = judgement.means()
    return {
        "teacher": teacher.label,
        "items": len(ITEMS),
        "readable_share": sum(g is not None for g in right + wrong) / (2 * len(ITEMS)),
        "mean_grade_right": means["right"],
        "mean_grade_wrong": means["wrong"],
        "pairwise_accuracy": sum(wins) / len(wins) if wins else None,
        "pairs_compared": len(wins),
        "grades_right": right,
        "grades_wrong": wrong,
        "seconds": round(seconds, 1),
    }


def _number(value: Any, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", action="append", default=None, help="Catalog spec (repeatable).")
    parser.add_argument("--endpoint", default=None, help="Base URL of an OpenAI-compatible teacher.")
    parser.add_argument("--endpoint-model", default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="Model catalog cache (default: ./var/models).")
    parser.add_argument("--model-root", type=Path, action="append", default=[], help="Allowed hf: directory.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="A tiny random model: a smoke test of the script.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    specs = args.teacher or (["tiny:llama-2l"] if args.quick else ["packaged:smollm2-135m-instruct"])
    if args.endpoint:
        specs = [] if args.teacher is None else specs
    config = CatalogConfig(cache_dir=args.cache_dir or default_cache_dir(), model_roots=tuple(args.model_root))
    rows: list[dict[str, Any]] = []
    for spec in specs:
        loaded = load_model(spec, config)
        with LocalTeacher(loaded) as teacher:
            row = measure(teacher)
        row["parameters"] = loaded.info.num_parameters
        rows.append(row)
    if args.endpoint:
        endpoint = EndpointTeacherConfig(
            base_url=args.endpoint, model=args.endpoint_model or "", api_key=os.environ.get("OPENAI_API_KEY", "")
        )
        with EndpointTeacher(endpoint) as teacher:
            rows.append({**measure(teacher), "parameters": None})

    print(f"{'teacher':<36} {'params':>8} {'readable':>9} {'right':>6} {'wrong':>6} {'pairwise':>9} {'s':>6}")
    for row in rows:
        params = f"{row['parameters'] / 1e6:.0f}M" if row["parameters"] else "?"
        print(
            f"{row['teacher'][:36]:<36} {params:>8} {row['readable_share']:>9.0%} "
            f"{_number(row['mean_grade_right']):>6} {_number(row['mean_grade_wrong']):>6} "
            f"{_number(row['pairwise_accuracy']):>9} {row['seconds']:>6}"
        )
    out = args.out or Path(__file__).parent / "results" / ("judge-quick.json" if args.quick else "judge.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads},
        "torch": torch.__version__,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
