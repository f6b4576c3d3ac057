"""10 concurrent folder uploads through the REST API against the running stack: no 5xx, latencies, verdicts.

The stack is real and local, as in bench/api_load.py: Django's ASGI app under uvicorn (its own process) and a
Celery worker on the `cpu` queue (its own process, the Procfile's `worker-cpu` line), on the bench's own
PostgreSQL database and Redis database, with a shared DATA_DIR for stored files. The script makes a user in a
fresh org with an API token, then 10 clients at once (one httpx client each, like 10 people) each:

1. create their own corpus (POST /api/v1/corpora);
2. upload a small folder one file after another, each in the two steps the upload page uses: record the file
   (POST .../files {name, size}, refused with 413 before a byte is sent when over a limit), then PUT its raw
   bytes to the returned `upload_url`;
3. request an ingest (POST .../ingest) and poll the version every second until it is ready.

Each folder mixes Markdown, plain text, HTML, a PDF with text, a large text file (up to a few MB), and three
files that must be turned away with a clear per-file verdict: PNG-like binary bytes (the PUT answers 400,
"Unsupported file type"), a truncated PDF (stored, then judged `failed` by the ingest) and a file announced at
600 MiB (refused at the record step, over the 512 MiB per-file limit). Every verdict is checked.

All clients share one org, each in its own corpus: the org row is the lock every upload record takes (limits are
per org), so one org is the contended case; a corpus takes one ingest at a time, so one corpus per client lets
the 10 ingests queue on the worker instead of being refused.

Reported: status counts per step (any 5xx, dropped connection, wrong verdict or corpus not ready fails the
run), per-file upload latency p50/p95/max (record + PUT), per-file throughput MB/s (files of 256 KB or more)
and the aggregate across the upload phase, time from the ingest request to ready p50/max (the version's own
created/finished stamps; with the worker's ingest seconds, the rest is the wait in the queue), and the web
process's peak RSS.

    .venv/bin/python bench/upload_load.py --quick      # 10 clients x ~0.7 MB folder, < 1 min on a quiet machine
    .venv/bin/python bench/upload_load.py              # 10 clients x ~3.8 MB folder, < 5 min

Writes bench/results/upload_load.json (upload_load-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.api_load import (  # noqa: E402  (the repository root is put on the path first)
    RESULTS,
    bench_environment,
    create_database,
    free_port,
    migrate,
    percentile,
    start_web,
    stop,
    wait_for,
)

BENCH_DB = "distillery_bench_uploads"
REDIS_DB = 12
ANNOUNCED_HUGE = 600 * 2**20  # over the default 512 MiB per-file limit: refused before a byte is sent
MB = 2**20
# Half the corpus page's 2 s: the polls are load on the web too, competing with the worker for the cores.
POLL_SECONDS = 1.0
# Common words: the text tokenizes like prose, not like random letters.
VOCABULARY = (
    "the a of to and in is it that for on with as was at by this be from or have an are not but which one all "
    "corpus upload ingest chunk token model expert router teacher student version file folder archive page text "
    "kettle bread dough oven flour butter salt yeast water rise knead bake slice crust crumb steam proof "
    "router gateway firewall packet subnet address lease tunnel client server port route socket latency "
    "river mountain forest meadow harbour island valley glacier canyon desert prairie tundra delta marsh"
)
WORDS = VOCABULARY.split()


@dataclass(frozen=True)
class Sizes:
    markdown: int
    text: int
    html: int
    pdf_pages: int
    large: int
    binary: int


QUICK = Sizes(markdown=4 * 1024, text=48 * 1024, html=24 * 1024, pdf_pages=4, large=512 * 1024, binary=64 * 1024)
DEFAULT = Sizes(markdown=12 * 1024, text=300 * 1024, html=120 * 1024, pdf_pages=24, large=3 * MB, binary=256 * 1024)


@dataclass(frozen=True)
class Item:
    """One file of a client's folder and the verdict it must get."""

    name: str
    data: bytes | None  # None: announced only (refused before any byte is sent)
    size: int
    expect: str  # "ok": stored and ingested; "binary": PUT refused; "ingest-failed": stored, ingest fails; "limit"


def prose(rng: random.Random, size: int) -> str:
    """Sentences of common words (distinct per seed, so nothing is deduplicated across files or corpora)."""
    sentences, total = [], 0
    while total < size:
        words = rng.choices(WORDS, k=rng.randint(6, 18))
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        total += len(sentence) + 1
    return " ".join(sentences)[:size]


def paragraphs(rng: random.Random, size: int) -> list[str]:
    chunks, total = [], 0
    while total < size:
        chunk = prose(rng, rng.randint(300, 900))
        chunks.append(chunk)
        total += len(chunk) + 2
    return chunks


def make_pdf(lines_per_page: list[list[str]]) -> bytes:
    """A small valid PDF of Helvetica text, one content stream per page (written by hand: pypdf reads text only)."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for lines in lines_per_page:
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        body = "BT /F1 10 Tf 12 TL 50 760 Td " + " ".join(f"({line}) Tj T*" for line in escaped) + " ET"
        stream = body.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content_number = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % content_number
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % kid for kid in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def folder(client: int, sizes: Sizes) -> list[Item]:
    """The client's folder: the same kinds and sizes for everyone, different words (seeded by the client)."""
    rng = random.Random(client)
    markdown = "# Notes\n\n" + "\n\n".join(f"## Part {i}\n\n{p}" for i, p in enumerate(paragraphs(rng, sizes.markdown)))
    html = "<!doctype html><html><head><title>Guide</title></head><body>" + "".join(
        f"<h2>Section {i}</h2><p>{p}</p>" for i, p in enumerate(paragraphs(rng, sizes.html))
    )
    html += "</body></html>"
    pages = [[prose(rng, 90) for _ in range(50)] for _ in range(sizes.pdf_pages)]
    binary = b"\x89PNG\r\n\x1a\n" + rng.randbytes(sizes.binary - 8)
    broken_pdf = make_pdf(pages[:1])[:700] + rng.randbytes(2048)  # cut inside its content stream, then noise
    files = [
        ("notes/readme.md", markdown.encode(), "ok"),
        ("notes/guide.txt", "\n\n".join(paragraphs(rng, sizes.text)).encode(), "ok"),
        ("pages/guide.html", html.encode(), "ok"),
        ("papers/report.pdf", make_pdf(pages), "ok"),
        ("data/handbook.txt", "\n\n".join(paragraphs(rng, sizes.large)).encode(), "ok"),
        ("figures/scan.png", binary, "binary"),
        ("papers/truncated.pdf", broken_pdf, "ingest-failed"),
    ]
    items = [Item(name, data, len(data), expect) for name, data, expect in files]
    items.append(Item("archive/everything.zip", None, ANNOUNCED_HUGE, "limit"))
    return items


class Recorder:
    """Every response's status, by step, shared by all clients (one event loop: no locking needed)."""

    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, int]] = {}

    def note(self, step: str, status: int | str) -> None:
        counts = self.statuses.setdefault(step, {})
        counts[str(status)] = counts.get(str(status), 0) + 1

    async def call(self, step: str, client: Any, method: str, url: str, **kwargs: Any) -> Any:
        """The response, or None when the connection failed (counted as an error, like a 5xx)."""
        try:
            response = await client.request(method, url, **kwargs)
        except Exception as error:  # a dropped connection or a timeout is a failure of the stack, with its reason
            self.note(step, f"error: {error.__class__.__name__}")
            return None
        self.note(step, response.status_code)
        return response


def message_of(response: Any) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    return (data.get("error") or {}).get("message") or data.get("message") or ""


async def one_client(
    url: str, token: str, index: int, items: list[Item], recorder: Recorder, ingest_timeout: float
) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    uploads: list[dict[str, Any]] = []
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        created = await recorder.call(
            "create corpus", client, "POST", "/api/v1/corpora", json={"name": f"Folder {index}"}
        )
        if created is None or created.status_code != 201:
            return {"client": index, "uploads": uploads, "problems": [f"corpus not created: {created}"]}
        corpus = created.json()["id"]
        files_url = f"/api/v1/corpora/{corpus}/files"
        phase_started = time.perf_counter()
        for item in items:
            started = time.perf_counter()
            record = await recorder.call(
                "record file", client, "POST", files_url, json={"name": item.name, "size": item.size}
            )
            row: dict[str, Any] = {"name": item.name, "bytes": item.size, "expect": item.expect}
            if record is None:
                problems.append(f"{item.name}: no answer to the record request")
                continue
            if item.expect == "limit":
                row.update(status=record.status_code, message=message_of(record))
                if record.status_code != 413:
                    problems.append(f"{item.name}: announced {item.size} bytes, answered {record.status_code}")
                uploads.append(row)
                continue
            if record.status_code != 201:
                problems.append(f"{item.name}: record answered {record.status_code}: {message_of(record)}")
                continue
            put_started = time.perf_counter()
            sent = await recorder.call(
                "put bytes",
                client,
                "PUT",
                record.json()["upload_url"],
                content=item.data,
                headers={"Content-Type": "application/octet-stream"},
            )
            finished = time.perf_counter()
            if sent is None:
                problems.append(f"{item.name}: the PUT got no answer")
                continue
            body = sent.json() if sent.headers.get("content-type", "").startswith("application/json") else {}
            row.update(
                status=sent.status_code,
                file_status=body.get("status"),
                message=message_of(sent),
                seconds=finished - started,
                put_seconds=finished - put_started,
            )
            uploads.append(row)
            wanted = 400 if item.expect == "binary" else 200
            if sent.status_code != wanted:
                problems.append(f"{item.name}: PUT answered {sent.status_code} (wanted {wanted}): {row['message']}")
            elif item.expect == "binary" and not row["message"].startswith("Unsupported file type"):
                problems.append(f"{item.name}: refused without saying why: {row['message']!r}")
            elif item.expect != "binary" and row["file_status"] != "stored":
                problems.append(f"{item.name}: {row['file_status']} after its PUT, wanted stored: {row['message']}")
        upload_seconds = time.perf_counter() - phase_started

        requested = time.perf_counter()
        ingest = await recorder.call("request ingest", client, "POST", f"/api/v1/corpora/{corpus}/ingest")
        if ingest is None or ingest.status_code != 202:
            problems.append(f"ingest not queued: {ingest.status_code if ingest else 'no answer'}")
            return {"client": index, "uploads": uploads, "problems": problems, "upload_seconds": upload_seconds}
        number = ingest.json()["number"]
        version: dict[str, Any] = {}
        ready_seconds = None
        while time.perf_counter() - requested < ingest_timeout:
            polled = await recorder.call("poll version", client, "GET", f"/api/v1/corpora/{corpus}/versions/{number}")
            if polled is not None and polled.status_code == 200:
                version = polled.json()
                if version["status"] in ("ready", "failed"):
                    # The server's own clock: the version is created by the ingest request and stamped when it
                    # finishes, so the poll interval does not blur the time.
                    if version.get("finished_at"):
                        finished_at = datetime.fromisoformat(version["finished_at"])
                        ready_seconds = (finished_at - datetime.fromisoformat(version["created_at"])).total_seconds()
                    else:
                        ready_seconds = time.perf_counter() - requested
                    break
            await asyncio.sleep(POLL_SECONDS)
        if version.get("status") != "ready":
            problems.append(
                f"version {number} is {version.get('status')} after {ingest_timeout:.0f} s: {version.get('error')}"
            )
        verdicts = {entry["name"]: entry for entry in version.get("files", [])}
        for item in items:
            entry = verdicts.get(item.name)
            if item.expect == "ok" and (entry is None or entry["verdict"] != "ok" or not entry["chunks"]):
                problems.append(f"{item.name}: ingest verdict {entry and entry['verdict']!r}, wanted 'ok' with chunks")
            if item.expect == "ingest-failed" and (entry is None or entry["verdict"] != "failed"):
                problems.append(f"{item.name}: ingest verdict {entry and entry['verdict']!r}, wanted 'failed'")
            if item.expect in ("binary", "limit") and entry is not None:
                problems.append(f"{item.name}: a refused file was ingested ({entry['verdict']})")
    return {
        "client": index,
        "corpus": corpus,
        "uploads": uploads,
        "upload_seconds": upload_seconds,
        "ingest_ready_seconds": ready_seconds,
        "ingest_worker_seconds": (version.get("stats") or {}).get("seconds"),
        "ingest_verdicts": {
            name: {"verdict": entry["verdict"], "message": entry["message"], "chunks": entry["chunks"]}
            for name, entry in verdicts.items()
        },
        "problems": problems,
    }


async def fire(
    url: str, token: str, folders: list[list[Item]], ingest_timeout: float
) -> tuple[list[dict[str, Any]], Recorder, float]:
    recorder = Recorder()
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one_client(url, token, index, items, recorder, ingest_timeout) for index, items in enumerate(folders))
    )
    return list(results), recorder, time.perf_counter() - started


def register(env: dict[str, str]) -> str:
    """A user in a fresh org with an API token (in a subprocess with the bench's settings)."""
    script = """
import django
django.setup()
from django.contrib.auth import get_user_model
from webapp.tenants.models import ApiToken, Organization
user = get_user_model().objects.create_user("uploader", "uploader@example.com")  # token only: no password hash
org = Organization.create_with_owner(name="Uploads", owner=user)
print(ApiToken.issue(organization=org, name="bench", created_by=user)[1])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, cwd=REPO_ROOT, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1]


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The Procfile's `worker-cpu` line (prefork, one child), logging to `log`."""
    command = [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--queues", "cpu"]
    command += ["--hostname", "cpu@bench-uploads", "--concurrency", "1", "--loglevel", "INFO"]
    return subprocess.Popen(
        command,
        env={**env, "DISTILLERY_PROCESS_ROLE": "worker-cpu"},
        cwd=REPO_ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_for_worker(process: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if b" ready." in log.read_bytes():
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"the cpu worker did not come up within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water resident set (VmHWM), read before it is stopped."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def worker_peak_rss_mb(pid: int) -> float | None:
    """The largest VmHWM among the worker and its prefork child (the child runs the ingest)."""
    import psutil

    try:
        pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return None
    peaks = [peak for peak in map(peak_rss_mb, pids) if peak is not None]
    return max(peaks) if peaks else None


def prepare_tokenizer(env: dict[str, str], cache_dir: Path) -> subprocess.Popen[bytes]:
    """Extract the student's tokenizer into the cache (once per machine) while the stack starts.

    The ingest loads it from there; without this the first ingest would also pay for the extraction.
    """
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from workers.ml.catalog import CatalogConfig, load_tokenizer\n"
        "spec = os.environ.get('MOE_BASE_MODEL', 'packaged:smollm2-135m-instruct')\n"
        "load_tokenizer(spec, CatalogConfig(cache_dir=Path(sys.argv[1]), device='cpu'), progress=lambda _: None)\n"
    )
    return subprocess.Popen([sys.executable, "-c", script, str(cache_dir)], env=env, cwd=REPO_ROOT)


def ms(values: list[float], fraction: float | None = None) -> float | None:
    if not values:
        return None
    value = statistics.median(values) if fraction is None else percentile(values, fraction)
    return round(1000 * value, 1)


def summarize(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    recorder: Recorder,
    wall: float,
    web_peak: float | None,
    worker_peak: float | None,
    files_per_client: int,
    load_before: float,
) -> dict[str, Any]:
    uploads = [row for result in results for row in result["uploads"]]
    put = [row for row in uploads if "seconds" in row]
    latencies = [row["seconds"] for row in put]
    large = [row for row in put if row["bytes"] >= 256 * 1024 and row["status"] == 200]
    throughputs = [row["bytes"] / MB / row["put_seconds"] for row in large]
    upload_phase = max((result.get("upload_seconds") or 0.0) for result in results)
    sent_bytes = sum(row["bytes"] for row in put)
    ready = [result["ingest_ready_seconds"] for result in results if result.get("ingest_ready_seconds") is not None]
    worker = [result["ingest_worker_seconds"] for result in results if result.get("ingest_worker_seconds") is not None]
    totals: dict[str, int] = {}
    for counts in recorder.statuses.values():
        for status, count in counts.items():
            totals[status] = totals.get(status, 0) + count
    server_errors = sum(count for status, count in totals.items() if not status.isdigit() or int(status) >= 500)
    by_file = {}
    for name in dict.fromkeys(row["name"] for row in put):
        rows = [row for row in put if row["name"] == name]
        by_file[name] = {
            "bytes": rows[0]["bytes"],
            "record_p50_ms": ms([row["seconds"] - row["put_seconds"] for row in rows]),
            "put_p50_ms": ms([row["put_seconds"] for row in rows]),
            "put_max_ms": round(1000 * max(row["put_seconds"] for row in rows), 1),
        }
    refused: dict[str, str] = {}
    for row in uploads:
        if row["expect"] in ("binary", "limit"):
            refused.setdefault(row["name"], f"{row['status']}: {row['message']}")
    for result in results:
        for name, entry in result.get("ingest_verdicts", {}).items():
            if entry["verdict"] != "ok":
                refused.setdefault(name, f"ingest {entry['verdict']}: {entry['message']}")
    problems = [f"client {result['client']}: {problem}" for result in results for problem in result["problems"]]
    return {
        "clients": args.clients,
        "files_per_client": files_per_client,
        "files_put": len(put),
        "bytes_per_client": sum(row["bytes"] for row in put) // max(1, args.clients),
        "corpora": "one per client, all in one org",
        "statuses": totals,
        "statuses_by_step": recorder.statuses,
        "server_errors": server_errors,
        "problems": problems,
        "upload_p50_ms": ms(latencies),
        "upload_p95_ms": ms(latencies, 0.95),
        "upload_max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "by_file": by_file,
        "put_mb_per_s_p50": round(statistics.median(throughputs), 2) if throughputs else None,
        "put_mb_per_s_min": round(min(throughputs), 2) if throughputs else None,
        "upload_phase_s": round(upload_phase, 2),
        "aggregate_mb_per_s": round(sent_bytes / MB / upload_phase, 2) if upload_phase else None,
        "ingest_ready_p50_s": round(statistics.median(ready), 2) if ready else None,
        "ingest_ready_max_s": round(max(ready), 2) if ready else None,
        "ingest_worker_s_p50": round(statistics.median(worker), 2) if worker else None,
        "ingest_worker_s_sum": round(sum(worker), 2) if worker else None,
        "web_peak_rss_mb": web_peak,
        "worker_peak_rss_mb": worker_peak,
        "wall_s": round(wall, 2),
        "refused": refused,
        "per_client": [
            {
                key: result.get(key)
                for key in ("client", "upload_seconds", "ingest_ready_seconds", "ingest_worker_seconds")
            }
            for result in results
        ],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1m": load_before},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="Small folders (~0.7 MB each): under a minute on a quiet machine."
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--ingest-timeout", type=float, default=None, help="Seconds to wait for every corpus.")
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / "var" / "test-model-cache"))
    args = parser.parse_args()
    sizes = QUICK if args.quick else DEFAULT
    ingest_timeout = args.ingest_timeout or (90.0 if args.quick else 300.0)
    cache_dir = Path(args.cache_dir)
    folders = [folder(index, sizes) for index in range(args.clients)]

    # The machine's 1-minute load before the bench adds its own: on shared cores it explains most of the spread.
    load_before = round(os.getloadavg()[0], 2)
    create_database(BENCH_DB)
    web_port = free_port()
    with tempfile.TemporaryDirectory(prefix="upload-load-") as scratch:
        # No engine: the upload and ingest paths never call it (the port only fills the setting).
        env = bench_environment(Path(scratch) / "data", free_port(), database=BENCH_DB, redis_db=REDIS_DB)
        env["MODEL_CACHE_DIR"] = str(cache_dir)
        import redis

        # Our own Redis database: an aborted earlier run's queued ingests must not reach this run's worker.
        redis.Redis.from_url(env["REDIS_URL"]).flushdb()
        started = time.perf_counter()
        processes: list[subprocess.Popen[bytes]] = [prepare_tokenizer(env, cache_dir)]
        web_log, worker_log = Path(scratch) / "web.log", Path(scratch) / "worker-cpu.log"
        try:
            # Everything that can start at once does (neither process touches the database before a request or a
            # task): the migration is the slowest step, and a quick run must stay under a minute.
            worker, web = start_worker(env, worker_log), start_web(env, web_port, web_log)
            processes += [worker, web]
            migrate(env)
            token = register(env)
            if processes[0].wait() != 0:
                raise RuntimeError("the tokenizer could not be prepared (see above)")
            wait_for(f"http://127.0.0.1:{web_port}/accounts/login/", 60)
            wait_for_worker(worker, worker_log, 120)
            print(f"stack up in {time.perf_counter() - started:.1f} s; {args.clients} clients start", flush=True)
            results, recorder, wall = asyncio.run(fire(f"http://127.0.0.1:{web_port}", token, folders, ingest_timeout))
            web_peak, worker_peak = peak_rss_mb(web.pid), worker_peak_rss_mb(worker.pid)
        finally:
            stop(processes)
        # The web's log holds the expected 4xx warnings; a traceback there is a server error we must not miss.
        web_errors = [
            line
            for line in web_log.read_text(errors="replace").splitlines()
            if "Internal Server Error" in line or "Traceback" in line or " ERROR " in line
        ]

    report = summarize(args, results, recorder, wall, web_peak, worker_peak, len(folders[0]), load_before)
    report["web_log_errors"] = web_errors[:20]
    print(
        f"{'clients':>8} {'files':>6} {'5xx':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'MB/s':>6} "
        f"{'agg MB/s':>8} {'ready p50':>9} {'ready max':>9} {'web RSS':>8}"
    )
    print(
        f"{args.clients:>8} {report['files_put']:>6} {report['server_errors']:>4} "
        f"{report['upload_p50_ms']!s:>8} {report['upload_p95_ms']!s:>8} {report['upload_max_ms']!s:>8} "
        f"{report['put_mb_per_s_p50']!s:>6} {report['aggregate_mb_per_s']!s:>8} "
        f"{report['ingest_ready_p50_s']!s:>9} {report['ingest_ready_max_s']!s:>9} {report['web_peak_rss_mb']!s:>8}"
    )
    print("statuses:", json.dumps(report["statuses_by_step"]))
    for name, verdict in report["refused"].items():
        print(f"turned away: {name}: {verdict}")
    for problem in report["problems"]:
        print(f"PROBLEM {problem}")
    for line in web_errors[:20]:
        print(f"WEB LOG {line}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("upload_load-quick.json" if args.quick else "upload_load.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if report["server_errors"] == 0 and not report["problems"] and not web_errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
