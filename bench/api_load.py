"""50 concurrent OpenAI-compatible API requests against the running stack: no 5xx, p50/p95 latency.

The stack is real and local: the inference engine (`python -m workers.moe`, its own process) and Django's ASGI
app under uvicorn (its own process), on the bench's own PostgreSQL database and Redis database. The script
registers two experts (random LoRA weights on the base, routing signatures of two toy corpora) in a fresh org,
issues an API token, then sends N requests at once with httpx: a mix of `moe` (routed), one expert, and `base`,
half of them streamed. Reported: status counts, latency p50/p95/max (time to the last byte), time to the first
streamed token, and generated tokens/s across the run.

    .venv/bin/python bench/api_load.py --quick      # tiny base, 50 requests x 8 tokens (< 1 min)
    .venv/bin/python bench/api_load.py              # packaged SmolLM2-135M base, 50 requests x 32 tokens

Writes bench/results/api_load.json (api_load-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
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
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "bench" / "results"
BENCH_DB = "distillery_bench"
CORPORA = {
    "cooking": [
        "Sear the steak in a hot pan, then rest it before slicing.",
        "Knead the dough until smooth and let it rise until doubled.",
        "Simmer the tomato sauce with garlic and basil for twenty minutes.",
    ],
    "networking": [
        "Configure the VPN client with the gateway address and the certificate.",
        "The firewall blocks inbound traffic on port 22 unless allow-listed.",
        "DHCP leases an IP address to each laptop for twenty-four hours.",
    ],
}
QUESTIONS = [
    "How long should bread dough rise?",
    "Why does my VPN connection drop?",
    "What is the capital of France?",
]


def bench_environment(
    data_dir: Path, engine_port: int, *, database: str = BENCH_DB, redis_db: int = 14
) -> dict[str, str]:
    """The stack's settings: its own PostgreSQL database and Redis database, so a bench never sees app data."""
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres:postgres@127.0.0.1:5432/{database}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "HF_HUB_OFFLINE": "1",
        "INFERENCE_URL": f"http://127.0.0.1:{engine_port}",
        "API_RATE_LIMIT_PER_MINUTE": "0",
        "TORCH_THREADS_ENGINE": os.environ.get("TORCH_THREADS_ENGINE", "2"),
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {seconds:.0f} s")


def create_database(name: str = BENCH_DB) -> None:
    """A fresh, empty database (the previous run's is dropped)."""
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")


def migrate(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=REPO_ROOT)


def start_web(env: dict[str, str], port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Django's ASGI app under uvicorn, in its own process, as the Procfile's `web` line runs it.

    Its output goes to `log` when given (a bench that answers many 4xx on purpose), else to the terminal.
    """
    command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    if log is None:
        return subprocess.Popen(command, env=env, cwd=REPO_ROOT)
    return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM all, then wait for each (a warm shutdown, as an operator would stop them)."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


def make_experts(base_spec: str, cache_dir: Path, out: Path) -> tuple[str, dict[str, Path]]:
    """Random-LoRA experts on the base, with routing signatures of the toy corpora; returns (base hash, dirs)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from workers.ml.catalog import CatalogConfig, load_model
    from workers.ml.distill.signature import compute_signature
    from workers.ml.embedder import shared_embedder

    base = load_model(base_spec, CatalogConfig(cache_dir=cache_dir, device="cpu"), progress=lambda _: None)
    embedder = shared_embedder()
    dirs = {}
    for seed, (name, texts) in enumerate(CORPORA.items(), start=1):
        target = out / name
        config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
        model = get_peft_model(base.model, config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "lora_" in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        model.save_pretrained(target)
        model.unload()
        (target / "base.json").write_text(json.dumps({"spec": base_spec, "content_hash": base.info.content_hash}))
        compute_signature(embedder, texts, k=2).save(target)
        dirs[name] = target
    return base.info.content_hash, dirs


def register(env: dict[str, str], base_spec: str, base_hash: str, dirs: dict[str, Path]) -> str:
    """A fresh org with the two experts and an API token (in a subprocess with the bench's settings)."""
    script = f"""
import django, json
django.setup()
from django.contrib.auth import get_user_model
from webapp.experts.models import Expert, ExpertVersion
from webapp.tenants.models import ApiToken, Organization
user = get_user_model().objects.create_user("bench", "bench@example.com", "bench-password-123")
org = Organization.create_with_owner(name="Bench", owner=user)
for name, location in {json.dumps({name: str(path) for name, path in dirs.items()})}.items():
    expert = Expert.objects.create(organization=org, name=name, slug=name)
    version = ExpertVersion.objects.create(organization=org, expert=expert, number=1, base_spec={base_spec!r},
        base_hash={base_hash!r}, recipe="kd", artifact_location=location)
    expert.active_version = version
    expert.save()
print(ApiToken.issue(organization=org, name="bench", created_by=user)[1])
"""
    migrate(env)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, cwd=REPO_ROOT, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1]


async def one_request(client: Any, index: int, max_tokens: int) -> dict[str, Any]:
    model = ["moe", "cooking", "base", "moe", "networking"][index % 5]
    stream = index % 2 == 1
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": stream,
    }
    started = time.perf_counter()
    first_token = None
    tokens = 0
    try:
        if stream:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                status = response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"content":"' in line and first_token is None:
                        first_token = time.perf_counter() - started
                    if line.startswith("data: {") and '"content":"' in line:
                        tokens += 1
        else:
            response = await client.post("/v1/chat/completions", json=body)
            status = response.status_code
            if status == 200:
                tokens = response.json()["usage"]["completion_tokens"]
    except Exception as error:  # a dropped connection counts as a failure, with its reason
        return {"status": f"error: {error.__class__.__name__}", "seconds": time.perf_counter() - started}
    return {
        "status": status,
        "seconds": time.perf_counter() - started,
        "first_token_s": first_token,
        "tokens": tokens,
        "model": model,
        "stream": stream,
    }


async def fire(url: str, token: str, requests: int, max_tokens: int) -> tuple[list[dict[str, Any]], float]:
    import httpx

    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600, limits=limits
    ) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, index, max_tokens) for index in range(requests)))
        return list(results), time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny base, 8 tokens per request.")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / "var" / "test-model-cache"))
    args = parser.parse_args()
    base_spec = "tiny:llama-4l" if args.quick else "packaged:smollm2-135m-instruct"
    max_tokens = args.max_tokens or (8 if args.quick else 32)
    cache_dir = Path(args.cache_dir)

    create_database()
    engine_port, web_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="api-load-") as scratch:
        env = bench_environment(Path(scratch) / "data", engine_port)
        base_hash, dirs = make_experts(base_spec, cache_dir, Path(scratch) / "experts")
        token = register(env, base_spec, base_hash, dirs)
        try:
            engine_command = [sys.executable, "-m", "workers.moe", "--port", str(engine_port), "--base", base_spec]
            engine_command += ["--model-cache-dir", str(cache_dir), "--threads", env["TORCH_THREADS_ENGINE"]]
            processes.append(subprocess.Popen(engine_command, env=env, cwd=REPO_ROOT))
            processes.append(start_web(env, web_port))
            wait_for(f"http://127.0.0.1:{engine_port}/health", 300)
            wait_for(f"http://127.0.0.1:{web_port}/accounts/login/", 60)
            url = f"http://127.0.0.1:{web_port}"
            asyncio.run(fire(url, token, 5, 2))  # warm-up: loads both experts and the router's signatures
            results, wall = asyncio.run(fire(url, token, args.requests, max_tokens))
        finally:
            stop(processes)

    statuses: dict[str, int] = {}
    for result in results:
        statuses[str(result["status"])] = statuses.get(str(result["status"]), 0) + 1
    ok = [result for result in results if result["status"] == 200]
    latencies = [result["seconds"] for result in ok]
    first_tokens = [result["first_token_s"] for result in ok if result.get("first_token_s") is not None]
    server_errors = sum(count for status, count in statuses.items() if not status.isdigit() or int(status) >= 500)
    report = {
        "base": base_spec,
        "requests": args.requests,
        "max_tokens": max_tokens,
        "statuses": statuses,
        "server_errors": server_errors,
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "first_token_p50_ms": round(1000 * statistics.median(first_tokens), 1) if first_tokens else None,
        "wall_s": round(wall, 2),
        "completion_tokens_per_s": round(sum(result.get("tokens", 0) for result in ok) / wall, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    print(
        f"{'requests':>10} {'ok':>5} {'5xx':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} {'TTFT p50':>9} {'tok/s':>8}"
    )
    print(
        f"{args.requests:>10} {len(ok):>5} {server_errors:>5} {report['p50_ms']!s:>9} {report['p95_ms']!s:>9} "
        f"{report['max_ms']!s:>9} {report['first_token_p50_ms']!s:>9} {report['completion_tokens_per_s']!s:>8}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("api_load-quick.json" if args.quick else "api_load.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if server_errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
