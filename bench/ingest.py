"""Corpus ingest: upload through the real HTTP stack, and the ingest pipeline against the raw tokenizer.

1. Upload: a generated text corpus (default 1 GiB in 8 files) is sent through the real stack — uvicorn
   serving Django's ASGI app, the browser's two-step protocol (record the file, then PUT its raw bytes), the
   storage API on local disk — while a sampler reads the web process's RSS every 20 ms. Reported: peak RSS of
   the web process (target < 300 MB) and MB/s.
2. Ingest: `ingest_corpus_version` (the Celery task's body, in this process) on a corpus of unique generated
   text: extract, normalise, chunk by the SmolLM2 tokenizer, drop duplicate chunks, write the rows to
   PostgreSQL, split, statistics. Its MB/s is set against the same tokenizer encoding the same text in plain
   batches (`tokenizer(batch_of_64KB_texts)`, no offsets, no chunking), measured in the same run. Target: the
   whole pipeline at >= 0.8x the raw tokenizer rate.

    .venv/bin/python bench/ingest.py                    # 1 GiB upload, 64 MiB ingest (a few minutes on 2 cores)
    .venv/bin/python bench/ingest.py --quick            # 64 MiB upload, 8 MiB ingest (< 1 minute)

Needs the local PostgreSQL and Redis (scripts/test.sh starts them); uses its own database `distillery_bench`
and Redis database 14. Writes bench/results/ingest.json (ingest-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "bench" / "results"
MB = 1 << 20
BENCH_DB = "distillery_bench"


def bench_environment(data_dir: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": f"postgres://postgres:postgres@127.0.0.1:5432/{BENCH_DB}",
        "REDIS_URL": "redis://127.0.0.1:6379/14",
        "DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "HF_HUB_OFFLINE": "1",
        "MODEL_CACHE_DIR": os.environ.get("MODEL_CACHE_DIR", str(REPO_ROOT / "var" / "models")),
        "CORPUS_MAX_FILE_BYTES": str(4 << 30),
        "CORPUS_MAX_BYTES": str(64 << 30),
        "ORG_STORAGE_QUOTA_BYTES": str(64 << 30),
    }


def create_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres:postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {BENCH_DB}")


# ---------------------------------------------------------------- generated text


def english_words() -> tuple[list[str], list[float]]:
    """Real English words with their frequencies, from the Python Language Reference shipped with CPython."""
    import re
    from collections import Counter
    from pydoc_data.topics import topics

    counts = Counter(word for text in topics.values() for word in re.findall(r"[a-z]+", text.lower()))
    words = [word for word, _ in counts.most_common()]
    cumulative, total = [], 0.0
    for word in words:
        total += counts[word]
        cumulative.append(total)
    return words, cumulative


def unique_text(size: int, seed: int) -> str:
    """`size` bytes of prose-like text: real English words at their real frequencies, in random sentences and
    paragraphs of 2-6 sentences (so chunking has paragraph boundaries to respect), never repeating."""
    rng = random.Random(seed)
    words, cumulative = english_words()
    paragraphs, total = [], 0
    while total < size:
        sentences = []
        for _ in range(rng.randint(2, 6)):
            picked = rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 22))
            sentences.append(" ".join(picked).capitalize() + ".")
        paragraph = " ".join(sentences)
        paragraphs.append(paragraph)
        total += len(paragraph) + 2
    return "\n\n".join(paragraphs)[:size]


def write_upload_files(directory: Path, total: int, files: int) -> list[Path]:
    """`files` files of total size `total`: a unique 8 MiB block repeated with a numbered header (fast to make)."""
    block = unique_text(8 * MB, seed=1).encode()
    per_file = total // files
    paths = []
    for number in range(files):
        path = directory / f"part-{number:02d}.txt"
        with path.open("wb") as handle:
            written, counter = 0, 0
            while written < per_file:
                piece = f"\n\nPart {number} block {counter}.\n\n".encode() + block
                piece = piece[: per_file - written]
                handle.write(piece)
                written += len(piece)
                counter += 1
        paths.append(path)
    return paths


# ---------------------------------------------------------------- the upload


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def rss(self) -> int:
        processes = [self.process, *self.process.children(recursive=True)]
        return sum(process.memory_info().rss for process in processes)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except Exception:  # the process ended
                return
            time.sleep(0.02)


def run_upload(env: dict[str, str], paths: list[Path], token: str, corpus_id: int) -> dict[str, Any]:
    import requests

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "webapp.asgi:application", "--port", str(port), "--log-level", "warning"],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "ALLOWED_HOSTS": "127.0.0.1,localhost", "DISTILLERY_PROCESS_ROLE": "web"},
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        for _ in range(300):
            try:
                if requests.get(f"{base}/accounts/login/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        # One small request first, so the baseline includes Django's imports and a warm connection pool.
        requests.get(f"{base}/api/v1/corpora/{corpus_id}", headers=headers, timeout=30).raise_for_status()
        sampler = RssSampler(server.pid)
        baseline = sampler.rss()
        sampler.start()
        total = 0
        started = time.perf_counter()
        for path in paths:
            size = path.stat().st_size
            record = requests.post(
                f"{base}/api/v1/corpora/{corpus_id}/files",
                json={"name": path.name, "size": size},
                headers=headers,
                timeout=60,
            )
            record.raise_for_status()
            with path.open("rb") as body:
                answer = requests.put(
                    record.json()["upload_url"],
                    data=body,
                    headers={**headers, "Content-Type": "application/octet-stream"},
                    timeout=600,
                )
            answer.raise_for_status()
            if answer.json()["status"] not in ("stored", "duplicate"):
                raise SystemExit(f"upload of {path.name} ended {answer.json()}")
            total += size
        seconds = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "bytes": total,
        "files": len(paths),
        "seconds": round(seconds, 2),
        "upload_mb_per_s": round(total / MB / seconds, 1),
        "upload_peak_rss_mb": round(sampler.peak / MB, 1),
        "web_baseline_rss_mb": round(baseline / MB, 1),
    }


# ---------------------------------------------------------------- the ingest


def run_ingest(size: int, files: int, scratch: Path) -> dict[str, Any]:
    from webapp.corpora import services
    from webapp.corpora.models import Corpus, CorpusVersion
    from webapp.tenants.models import Organization
    from workers.tasks.ingest import ingest_corpus_version, student_tokenizer

    org = Organization.objects.get(slug="bench")
    corpus = Corpus.objects.create(organization=org, name="ingest")
    texts = [unique_text(size // files, seed=100 + number) for number in range(files)]
    for number, text in enumerate(texts):
        path = scratch / f"doc-{number}.txt"
        path.write_text(text)
        with path.open("rb") as handle:
            services.upload_file_object(corpus, name=path.name, fileobj=handle, size=path.stat().st_size, user=None)
    tokenizer = student_tokenizer(services.version_settings()["tokenizer"])

    # The peer: the same tokenizer over the same text in plain batches of 64 KiB pieces.
    pieces = [text[start : start + 65536] for text in texts for start in range(0, len(text), 65536)]
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(pieces), 64):
        tokens += sum(len(ids) for ids in tokenizer(pieces[start : start + 64], add_special_tokens=False)["input_ids"])
    tokenizer_s = time.perf_counter() - started

    from django.db import transaction

    with transaction.atomic():
        version = services.request_ingest(corpus, user=None)
    started = time.perf_counter()
    ingest_corpus_version(version.pk)
    ingest_s = time.perf_counter() - started
    version = CorpusVersion.objects.get(pk=version.pk)
    if version.status != CorpusVersion.Status.READY:
        raise SystemExit(f"ingest failed: {version.error}")
    megabytes = sum(len(text.encode()) for text in texts) / MB
    return {
        "text_mb": round(megabytes, 1),
        "files": files,
        "raw_tokens": tokens,
        "chunks": version.stats["chunks"],
        "chunk_tokens": version.stats["tokens"],
        "tokenizer_seconds": round(tokenizer_s, 2),
        "ingest_seconds": round(ingest_s, 2),
        "tokenizer_mb_per_s": round(megabytes / tokenizer_s, 2),
        "ingest_mb_per_s": round(megabytes / ingest_s, 2),
        "ingest_vs_tokenizer": round(tokenizer_s / ingest_s, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--upload-mb", type=int, default=None)
    parser.add_argument("--ingest-mb", type=int, default=None)
    parser.add_argument("--skip-upload", action="store_true")
    args = parser.parse_args()
    upload_mb = args.upload_mb or (64 if args.quick else 1024)
    ingest_mb = args.ingest_mb or (8 if args.quick else 64)

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch_name:
        scratch = Path(scratch_name)
        env = bench_environment(scratch / "data")
        os.environ.update(env)
        create_database()
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from django.contrib.auth import get_user_model

        from webapp.corpora.models import Corpus
        from webapp.tenants.models import ApiToken, Organization

        user = get_user_model().objects.create_user("bench", password=None)
        org = Organization.create_with_owner(name="bench", owner=user)
        _, token = ApiToken.issue(organization=org, name="bench", created_by=user)
        results: dict[str, Any] = {}
        if not args.skip_upload:
            corpus = Corpus.objects.create(organization=org, name="upload")
            upload_dir = scratch / "upload"
            upload_dir.mkdir()
            paths = write_upload_files(upload_dir, upload_mb * MB, files=8)
            results["upload"] = run_upload(env, paths, token, corpus.pk)
            for path in paths:
                path.unlink()
        results["ingest"] = run_ingest(ingest_mb * MB, files=8, scratch=scratch)

    import torch

    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }
    summary = {**results.get("upload", {}), **results["ingest"]}
    print(f"\n{'measure':<28}{'value':>14}")
    for key in (
        "upload_peak_rss_mb",
        "web_baseline_rss_mb",
        "upload_mb_per_s",
        "ingest_mb_per_s",
        "tokenizer_mb_per_s",
        "ingest_vs_tokenizer",
    ):
        if key in summary:
            print(f"{key:<28}{summary[key]:>14}")
    out = RESULTS / ("ingest-quick.json" if args.quick else "ingest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "details": results}, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
