"""The MoE router: latency per query (embedding included) and top-1 accuracy on held-out questions.

1. Accuracy. Five corpora from packages installed in the virtual environment, their docstrings chunked by
   paragraph (~800 characters): Django, Celery, pandas, NumPy and SymPy (pandas and NumPy are neighbours, both
   array/table libraries; Django and Celery meet in web back ends). Each package's modules are split
   deterministically (sha256 of the module name, 1 in 5 held out); each expert's signature is `compute_signature`
   on its training modules' chunks. The questions in bench/route_questions/*.json were written by hand about the
   held-out modules (the script checks that each names a held-out module), as a user would ask them, mostly
   without naming the library. Reported: top-1 accuracy among all five experts (ranked by the router's
   count-weighted soft maximum over centroids at --centroid-temperature); the best plain max cosine of on-topic
   and of off-topic questions (offtopic.json: cooking, sport, history...) and, at the router's threshold (compared
   with that plain max cosine), the share of off-topic questions that fall back to the base (should be ~1) and of
   on-topic ones (should be ~0), with a sweep of thresholds.
   The naive path's decisions (SentenceEmbedder.embed) are compared with the fast path's (QueryEmbedder).
2. Latency. Synthetic signatures (1-k random unit centroids each, k = --k) for 10, 100 and 1,000 experts, all of them
   candidates; every question routed once per scale, timed end to end (embedding + scoring), no cache hits:
   - naive: `SentenceEmbedder.embed([q])`, then a Python loop over the experts (`signature.similarity`);
   - ours: `Router.route` (QueryEmbedder + vectorised scoring), its decisions also compared with float32-only
     scoring of the same embeddings (`float32_scoring_agreement`: the router's fp16 first pass must not change any).
3. Query path variants: QueryEmbedder with fp32, fp16, int8 (and bf16 where native) weights on 1 and 2 threads,
   interleaved query by query (fair on a shared machine), with their cosines to the reference embedder.
   --dtype picks the weights of the path timed in 2. and scored in 1. (default: QueryEmbedder's choice).

    .venv/bin/python bench/route.py --k 16       # ~10 minutes on 2 cores (embedding the corpora dominates)
    .venv/bin/python bench/route.py --quick      # 300 chunks per corpus, fewer timed queries (< 1 minute)

Writes bench/results/route.json (route-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402 - after the path set-up above

from workers.ml.distill.config import DistillConfig  # noqa: E402
from workers.ml.distill.signature import RoutingSignature, compute_signature  # noqa: E402
from workers.ml.embedder import SentenceEmbedder, shared_embedder  # noqa: E402
from workers.moe.query_embedder import QueryEmbedder, _bf16_is_native  # noqa: E402
from workers.moe.router import Router, RouterSettings  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results"
QUESTIONS = REPO_ROOT / "bench" / "route_questions"
CORPORA = ("django", "celery", "pandas", "numpy", "sympy")
SKIP_PARTS = {"tests", "test", "testing", "migrations", "locale", "conftest.py"}
CHUNK_CHARS = 800
MIN_CHUNK_CHARS = 80
SCALES = (10, 100, 1000)


# ---------------------------------------------------------------- corpora


def site_packages() -> Path:
    import django

    return Path(django.__file__).resolve().parent.parent


def held_out(module: str) -> bool:
    """1 module in 5, chosen by hash: stable across machines and package versions."""
    return int(hashlib.sha256(module.encode()).hexdigest(), 16) % 5 == 0


def paragraphs(docstring: str) -> list[str]:
    """A docstring's prose paragraphs, doctest examples dropped (code says little about the topic in words).

    Also measured: numpydoc reference sections (Parameters, See Also...) dropped and each chunk titled with the
    documented object's dotted name. Top-1 accuracy fell (82.9% against 87.8% at k=4), so chunks stay plain.
    """
    kept = []
    for block in docstring.split("\n\n"):
        lines = [line for line in block.strip().splitlines() if not line.lstrip().startswith((">>>", "..."))]
        text = " ".join(line.strip() for line in lines).strip()
        if text:
            kept.append(text)
    return kept


def chunks_of(docstring: str) -> list[str]:
    """Consecutive paragraphs merged up to ~CHUNK_CHARS: a chunk is a docstring, or a section of a long one."""
    chunks, current = [], ""
    for paragraph in paragraphs(docstring):
        if current and len(current) + len(paragraph) > CHUNK_CHARS:
            chunks.append(current)
            current = ""
        current = f"{current} {paragraph}".strip()
    if current:
        chunks.append(current)
    return [chunk[: CHUNK_CHARS * 2] for chunk in chunks if len(chunk) >= MIN_CHUNK_CHARS]


def corpus(package: str) -> dict[str, list[str]]:
    """module name -> chunks of its docstrings (module, classes, functions), read with ast (nothing imported)."""
    root = site_packages()
    modules: dict[str, list[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        relative = path.relative_to(root)
        if SKIP_PARTS & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docstrings = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, nodes)]
        chunks = [chunk for docstring in docstrings if docstring for chunk in chunks_of(docstring)]
        if chunks:
            modules[".".join(relative.with_suffix("").parts).removesuffix(".__init__")] = chunks
    return modules


def load_questions(name: str) -> list[dict[str, Any]]:
    return list(json.loads((QUESTIONS / f"{name}.json").read_text(encoding="utf-8"))["questions"])


# ---------------------------------------------------------------- accuracy


def accuracy(
    embedder: SentenceEmbedder,
    fast: QueryEmbedder,
    k: int,
    max_texts: int,
    threshold: float,
    centroid_temperature: float,
) -> dict[str, Any]:
    signatures: dict[str, RoutingSignature] = {}
    sizes: dict[str, dict[str, int]] = {}
    on_topic: list[tuple[str, str]] = []  # (question, expected expert)
    for name in CORPORA:
        modules = corpus(name)
        train = [chunk for module, chunks in modules.items() if not held_out(module) for chunk in chunks]
        for item in load_questions(name):
            if not held_out(item["module"]) or item["module"] not in modules:
                raise SystemExit(f"{name}: question about {item['module']}, which is not a held-out module")
            on_topic.append((item["question"], name))
        started = time.perf_counter()
        signatures[name] = compute_signature(embedder, train, k=k, max_texts=max_texts)
        sizes[name] = {
            "train_modules": sum(not held_out(module) for module in modules),
            "heldout_modules": sum(held_out(module) for module in modules),
            "train_chunks": len(train),
            "centroids": len(signatures[name].centroids),
        }
        print(f"  signature {name:<8} {len(train):>6} train chunks, {time.perf_counter() - started:5.1f} s", flush=True)
    off_topic = [item["question"] for item in load_questions("offtopic")]

    router = Router(fast)
    for name, signature in signatures.items():
        router.register(name, signature)
    # Never fall back: the top-1 expert (by ranking score) and the best plain max cosine of every question.
    everything = RouterSettings(threshold=-1.0, centroid_temperature=centroid_temperature)

    def decide(embeddings: torch.Tensor) -> list[tuple[str, float]]:
        decisions = [router.route_embedding(row, CORPORA, everything) for row in embeddings]
        return [(decision.scores[0][0], float(decision.best_score or 0.0)) for decision in decisions]

    questions = [question for question, _ in on_topic] + off_topic
    ours_vectors = fast.embed(questions)  # (Q, D)
    naive_vectors = embedder.embed(questions)  # (Q, D)
    ours, naive = decide(ours_vectors), decide(naive_vectors)
    n_on = len(on_topic)
    correct = [ours[index][0] == expected for index, (_, expected) in enumerate(on_topic)]
    naive_correct = [naive[index][0] == expected for index, (_, expected) in enumerate(on_topic)]
    # The router's fp16 first pass (used from HALF_PRECISION_MIN_ROWS rows on; 80 rows here) forced on, against
    # float32 scoring: the decisions must be the same (tests/workers/moe/test_router_half.py checks it on random
    # data; this is the check on real signatures and questions).
    deployed = RouterSettings(threshold=threshold, centroid_temperature=centroid_temperature)
    half_agree = half_vs_float32(signatures, ours_vectors, fast, deployed)
    # The same signatures ranked by the plain max cosine (centroid_temperature 0), for comparison.
    plain = RouterSettings(threshold=-1.0, centroid_temperature=0.0)
    plain_top1 = [router.route_embedding(row, CORPORA, plain).scores[0][0] for row in ours_vectors[:n_on]]
    plain_correct = [chosen == expected for chosen, (_, expected) in zip(plain_top1, on_topic, strict=True)]
    on_best = [score for _, score in ours[:n_on]]
    off_best = [score for _, score in ours[n_on:]]
    per_corpus = {
        name: sum(ok for ok, (_, expected) in zip(correct, on_topic, strict=True) if expected == name)
        / sum(expected == name for _, expected in on_topic)
        for name in CORPORA
    }
    misses = [
        {"question": question, "expected": expected, "chosen": ours[index][0], "score": round(ours[index][1], 4)}
        for index, (question, expected) in enumerate(on_topic)
        if not correct[index]
    ]
    # A sweep of thresholds: the trade-off the default was chosen from.
    sweep = [
        {
            "threshold": round(value, 2),
            "offtopic_fallback_rate": sum(score < value for score in off_best) / len(off_best),
            "ontopic_fallback_rate": sum(score < value for score in on_best) / len(on_best),
        }
        for value in [step / 100 for step in range(10, 51)]
    ]
    # The lowest threshold that still sends >= 95% of the off-topic questions to the base: RouterSettings.threshold.
    suggested = min(
        (row for row in sweep if row["offtopic_fallback_rate"] >= 0.95), key=lambda row: row["threshold"], default=None
    )
    return {
        "corpora": sizes,
        "k": k,
        "centroid_temperature": centroid_temperature,
        "questions_on_topic": n_on,
        "questions_off_topic": len(off_topic),
        "top1_accuracy": sum(correct) / n_on,
        "top1_accuracy_reference_embedder": sum(naive_correct) / n_on,
        "top1_accuracy_per_corpus": per_corpus,
        "top1_accuracy_plain_max": sum(plain_correct) / n_on,
        "misses": misses,
        "threshold": threshold,
        "offtopic_fallback_rate": sum(score < threshold for score in off_best) / len(off_best),
        "ontopic_fallback_rate": sum(score < threshold for score in on_best) / len(on_best),
        "ontopic_best_cosine": summary(on_best),
        "offtopic_best_cosine": summary(off_best),
        "threshold_sweep": sweep,
        "suggested_threshold": suggested,
        "naive_vs_ours_top1_agreement": sum(a[0] == b[0] for a, b in zip(ours, naive, strict=True)) / len(questions),
        "naive_vs_ours_min_cosine": float((ours_vectors * naive_vectors).sum(dim=-1).min()),
        "naive_vs_ours_median_cosine": float((ours_vectors * naive_vectors).sum(dim=-1).median()),
        # Same side of the threshold with the reference embedder's vector as with ours, on- and off-topic.
        "naive_vs_ours_fallback_agreement": sum(
            (a[1] < threshold) == (b[1] < threshold) for a, b in zip(ours, naive, strict=True)
        )
        / len(questions),
        "offtopic_fallback_rate_reference_embedder": sum(score < threshold for _, score in naive[n_on:])
        / len(off_best),
        "half_vs_float32_scoring_agreement": half_agree,
    }


def half_vs_float32(
    signatures: dict[str, RoutingSignature], vectors: torch.Tensor, encoder: QueryEmbedder, settings: RouterSettings
) -> float:
    """Share of queries whose decision (experts, weights, best cosine) is the same with the fp16 first pass."""
    import workers.moe.router as router_module

    threshold = router_module.HALF_PRECISION_MIN_ROWS
    try:
        routers = []
        for minimum in (10**9, 0):  # float32 only, then the fp16 pass whatever the number of rows
            router_module.HALF_PRECISION_MIN_ROWS = minimum
            router = Router(encoder)
            for name, signature in signatures.items():
                router.register(name, signature)
            router._snapshot()  # built now, under this minimum
            routers.append(router)
    finally:
        router_module.HALF_PRECISION_MIN_ROWS = threshold
    exact, half = routers
    return same_decisions(exact, half, vectors, list(signatures), settings)


def same_decisions(
    exact: Router, other: Router, vectors: torch.Tensor, candidates: list[str], settings: RouterSettings
) -> float:
    """Share of the vectors routed the same way: chosen experts in order, weights and best cosine within 1e-5."""
    same = 0
    for vector in vectors:
        a, b = exact.route_embedding(vector, candidates, settings), other.route_embedding(vector, candidates, settings)
        same += (
            [eid for eid, _ in a.experts] == [eid for eid, _ in b.experts]
            and all(abs(x[1] - y[1]) <= 1e-5 for x, y in zip(a.experts, b.experts, strict=True))
            and abs((a.best_score or 0.0) - (b.best_score or 0.0)) <= 1e-5
            and a.fallback == b.fallback
        )
    return same / len(vectors)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 4),
        "p10": round(ordered[len(ordered) // 10], 4),
        "median": round(statistics.median(ordered), 4),
        "max": round(ordered[-1], 4),
    }


# ---------------------------------------------------------------- latency


def random_signatures(count: int, name: str, dim: int, k_max: int, seed: int = 0) -> dict[str, RoutingSignature]:
    generator = torch.Generator().manual_seed(seed)
    signatures = {}
    for index in range(count):
        k = int(torch.randint(1, k_max + 1, (1,), generator=generator))
        centroids = torch.nn.functional.normalize(torch.randn(k, dim, generator=generator), dim=-1)  # (k, D)
        counts = torch.randint(1, 500, (k,), generator=generator).tolist()
        signatures[f"expert-{index}"] = RoutingSignature(name, dim, centroids.tolist(), counts)
    return signatures


def float32_router(encoder: QueryEmbedder, signatures: dict[str, RoutingSignature]) -> Router:
    import workers.moe.router as router_module

    minimum = router_module.HALF_PRECISION_MIN_ROWS
    router_module.HALF_PRECISION_MIN_ROWS = 10**9
    try:
        router = Router(encoder)
        for expert_id, signature in signatures.items():
            router.register(expert_id, signature)
        router._snapshot()  # built now: float32 only
    finally:
        router_module.HALF_PRECISION_MIN_ROWS = minimum
    return router


def embedder_variants(embedder: SentenceEmbedder, queries: list[str], repeats: int) -> dict[str, Any]:
    """The query path's weight formats (QueryEmbedder dtype) and thread counts, interleaved query by query.

    Interleaving makes the comparison fair on a shared machine: a busy moment slows every variant alike.
    """
    dtypes = [torch.float32, torch.float16, torch.qint8]
    if _bf16_is_native():
        dtypes.append(torch.bfloat16)
    reference = embedder.embed(queries)  # (Q, D)
    threads = torch.get_num_threads()
    variants: dict[str, tuple[QueryEmbedder, int]] = {}
    for dtype in dtypes:
        for count in sorted({1, threads}):
            variants[f"{str(dtype).removeprefix('torch.')}/{count}t"] = (
                QueryEmbedder(embedder, cache_size=0, dtype=dtype),
                count,
            )
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, torch.Tensor] = {}
    try:
        for name, (encoder, count) in variants.items():
            torch.set_num_threads(count)
            vectors[name] = encoder.embed(queries)  # also the warm-up
        for _ in range(repeats):
            for query in queries:
                for name, (encoder, count) in variants.items():
                    torch.set_num_threads(count)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    encoder.embed_one(query)
                    wall[name].append((time.perf_counter() - started) * 1000)
                    cpu[name].append((time.process_time() - cpu_started) * 1000)
    finally:
        torch.set_num_threads(threads)
    results = {}
    for name in variants:
        cosines = (vectors[name] * reference).sum(dim=-1)
        results[name] = {
            "p50_ms": round(percentiles(wall[name])[0], 3),
            "process_cpu_p50_ms": round(percentiles(cpu[name])[0], 3),
            "min_cosine_to_reference": round(float(cosines.min()), 5),
            "median_cosine_to_reference": round(float(cosines.median()), 5),
        }
    return results


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def latency(
    embedder: SentenceEmbedder, fast: QueryEmbedder, queries: list[str], k: int, centroid_temperature: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    settings = RouterSettings(centroid_temperature=centroid_temperature)
    score_ms: dict[str, list[float]] = {}
    embed_ms: dict[str, list[float]] = {}
    for count in SCALES:
        signatures = random_signatures(count, embedder.name, embedder.dim, k)
        router = Router(fast)
        for expert_id, signature in signatures.items():
            router.register(expert_id, signature)
        ids = list(signatures)
        centroids = {expert_id: signature.centroid_tensor() for expert_id, signature in signatures.items()}

        def naive(query: str, centroids: dict[str, torch.Tensor] = centroids) -> str:
            vector = embedder.embed([query])[0]  # (D,)
            scores = {expert_id: float((block @ vector).max()) for expert_id, block in centroids.items()}
            return max(scores, key=scores.__getitem__)

        scoring = score_ms.setdefault(str(count), [])
        embedding = embed_ms.setdefault(str(count), [])

        def ours(
            query: str,
            router: Router = router,
            ids: list[str] = ids,
            scoring: list[float] = scoring,
            embedding: list[float] = embedding,
        ) -> str:
            decision = router.route(query, ids, settings)
            scoring.append(decision.score_ms)
            embedding.append(decision.embed_ms)
            return decision.scores[0][0]

        row = {}
        for label, route in (("naive", naive), ("ours", ours)):
            for query in queries[:5]:
                route(query)  # warm-up: first calls pay for allocations and oneDNN primitive creation
            samples, cpu_samples = [], []
            for query in queries:
                started, cpu_started = time.perf_counter(), time.thread_time()
                route(query)
                samples.append((time.perf_counter() - started) * 1000)
                cpu_samples.append((time.thread_time() - cpu_started) * 1000)
            p50, p99 = percentiles(samples)
            row[label] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "queries": len(samples)}
            if torch.get_num_threads() == 1:
                # With one torch thread all the work runs on this thread: its CPU time leaves out the time other
                # processes took the core away (wall clock on a shared machine does not), though not their cache
                # pollution (the embedding reads ~21 MB of weights per query).
                cpu_p50, cpu_p99 = percentiles(cpu_samples)
                row[label] |= {"thread_cpu_p50_ms": round(cpu_p50, 3), "thread_cpu_p99_ms": round(cpu_p99, 3)}
        score_p50, score_p99 = percentiles(scoring[5:])  # the router's own scoring time, embedding left out
        row["ours"] |= {"score_p50_ms": round(score_p50, 3), "score_p99_ms": round(score_p99, 3)}
        row["ours"]["embed_p50_ms"] = round(percentiles(embedding[5:])[0], 3)
        # Same decisions as scoring every centroid in float32 (the fp16 first pass is used from
        # HALF_PRECISION_MIN_ROWS rows on, i.e. at 1,000 experts here)?
        exact = float32_router(fast, signatures)
        row["ours"]["float32_scoring_agreement"] = same_decisions(exact, router, fast.embed(queries), ids, settings)
        results[str(count)] = row
        print(
            f"  {count:>5} experts: naive p50 {row['naive']['p50_ms']:.2f} ms, ours p50 {row['ours']['p50_ms']:.2f} ms",
            flush=True,
        )
    return results


# ---------------------------------------------------------------- main


def cpu_flags() -> list[str]:
    """The vector extensions the query path's speed depends on (bf16 is native only with avx512_bf16 or amx)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(flag for flag in flags if flag.startswith(("avx", "amx")) or flag in {"fma", "f16c"})


def at_1000_agreement(timings: dict[str, Any]) -> float:
    return float(timings["1000"]["ours"]["float32_scoring_agreement"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 chunks per corpus, 40 timed queries per scale")
    parser.add_argument(
        "--k",
        type=int,
        default=DistillConfig.__dataclass_fields__["signature_centroids"].default,
        help="centroids per signature (compute_signature's k; the latency part's random signatures have 1-k)",
    )
    parser.add_argument("--max-texts", type=int, default=2000, help="chunks embedded per signature")
    parser.add_argument("--threshold", type=float, default=RouterSettings().threshold, help="fallback threshold")
    parser.add_argument(
        "--centroid-temperature",
        type=float,
        default=RouterSettings().centroid_temperature,
        help="soft maximum over an expert's centroids that ranks the experts (0: plain max)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the deployment's 2 cores)")
    parser.add_argument(
        "--dtype",
        choices=["default", "float32", "bfloat16", "float16", "qint8"],
        default="default",
        help="the query path's weights (QueryEmbedder dtype); default: the one QueryEmbedder picks for this CPU",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="time the latency part again (e.g. on an idle machine) and update it in the existing JSON",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    max_texts = 300 if args.quick else args.max_texts

    embedder = shared_embedder()
    dtype = None if args.dtype == "default" else getattr(torch, args.dtype)
    fast = QueryEmbedder(embedder, cache_size=0, dtype=dtype)  # no cache: every timed query pays for its embedding
    print(f"embedder {embedder.name}, query path {fast!r}, {torch.get_num_threads()} threads", flush=True)

    started = time.perf_counter()
    out = RESULTS / ("route-quick.json" if args.quick else "route.json")
    if args.latency_only:
        previous = json.loads(out.read_text(encoding="utf-8"))
        timing_keys = {"latency", "machine", "wall_s", "p50_ms_at_1000", "p99_ms_at_1000", "score_p50_ms_at_1000"}
        timing_keys |= {"embed_p50_ms_at_1000", "float32_scoring_agreement_at_1000", "query_path_variants"}
        quality = {key: value for key, value in previous.items() if key not in timing_keys}
    else:
        print("accuracy", flush=True)
        quality = accuracy(embedder, fast, args.k, max_texts, args.threshold, args.centroid_temperature)
    queries = [item["question"] for name in (*CORPORA, "offtopic") for item in load_questions(name)]
    print("latency", flush=True)
    load_before = os.getloadavg()[0]
    timings = latency(embedder, fast, queries[:40] if args.quick else queries, args.k, args.centroid_temperature)
    load_after = os.getloadavg()[0]
    print("query path variants (interleaved)", flush=True)
    variants = embedder_variants(embedder, queries[:40] if args.quick else queries, 1 if args.quick else 2)
    print(f"\n{'variant':<14}{'p50':>9}{'CPU p50':>10}{'min cos':>10}{'median cos':>12}   (embedding one query, ms)")
    for name, row in variants.items():
        print(
            f"{name:<14}{row['p50_ms']:>9.2f}{row['process_cpu_p50_ms']:>10.2f}"
            f"{row['min_cosine_to_reference']:>10.5f}{row['median_cosine_to_reference']:>12.5f}"
        )

    print(f"\n{'experts':>8}{'naive p50':>12}{'naive p99':>12}{'ours p50':>12}{'ours p99':>12}   (ms per query, wall)")
    for count, row in timings.items():
        print(
            f"{count:>8}{row['naive']['p50_ms']:>12.2f}{row['naive']['p99_ms']:>12.2f}"
            f"{row['ours']['p50_ms']:>12.2f}{row['ours']['p99_ms']:>12.2f}"
        )
    if torch.get_num_threads() == 1:
        print(f"{'':>8}{'naive p50':>12}{'naive p99':>12}{'ours p50':>12}{'ours p99':>12}   (ms per query, thread CPU)")
        for count, row in timings.items():
            naive_row, ours_row = row["naive"], row["ours"]
            print(
                f"{count:>8}{naive_row['thread_cpu_p50_ms']:>12.2f}{naive_row['thread_cpu_p99_ms']:>12.2f}"
                f"{ours_row['thread_cpu_p50_ms']:>12.2f}{ours_row['thread_cpu_p99_ms']:>12.2f}"
            )
    print(f"\n{'corpus':<10}{'train chunks':>14}{'centroids':>11}{'top-1':>8}")
    for name in CORPORA:
        size = quality["corpora"][name]
        print(
            f"{name:<10}{size['train_chunks']:>14}{size['centroids']:>11}"
            f"{quality['top1_accuracy_per_corpus'][name]:>8.0%}"
        )
    print(
        f"top-1 accuracy {quality['top1_accuracy']:.1%} on {quality['questions_on_topic']} held-out questions "
        f"(plain max: {quality.get('top1_accuracy_plain_max', float('nan')):.1%}); "
        f"at threshold {quality['threshold']}: off-topic fallback {quality['offtopic_fallback_rate']:.0%} "
        f"({quality['questions_off_topic']} questions), on-topic fallback {quality['ontopic_fallback_rate']:.0%}"
    )
    print(f"suggested threshold (off-topic fallback >= 95%): {quality.get('suggested_threshold')}")
    print(f"best cosine on-topic {quality['ontopic_best_cosine']}, off-topic {quality['offtopic_best_cosine']}")
    print(
        f"naive vs fast query path: top-1 agreement {quality['naive_vs_ours_top1_agreement']:.0%}, "
        f"fallback agreement {quality.get('naive_vs_ours_fallback_agreement', float('nan')):.0%}, "
        f"min cosine {quality['naive_vs_ours_min_cosine']:.5f}; with the reference embedder: top-1 "
        f"{quality.get('top1_accuracy_reference_embedder', float('nan')):.1%}, off-topic fallback "
        f"{quality.get('offtopic_fallback_rate_reference_embedder', float('nan')):.0%}"
    )
    print(
        "fp16 first pass vs float32 scoring: same decisions on "
        f"{quality.get('half_vs_float32_scoring_agreement', 0):.0%} of the real questions, "
        f"{at_1000_agreement(timings):.0%} of the queries at 1,000 random experts"
    )
    for miss in quality["misses"]:
        print(f"  miss: {miss}")

    at_1000 = timings["1000"]["ours"]
    result = {
        "p50_ms_at_1000": at_1000["p50_ms"],
        "p99_ms_at_1000": at_1000["p99_ms"],
        "score_p50_ms_at_1000": at_1000["score_p50_ms"],
        "embed_p50_ms_at_1000": at_1000["embed_p50_ms"],
        "float32_scoring_agreement_at_1000": at_1000["float32_scoring_agreement"],
        "latency": timings,
        "query_path_variants": variants,
        **quality,
        "quick": args.quick,
        "max_texts": max_texts,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "query_dtype": str(fast.dtype),
            "cpu_flags": cpu_flags(),
            # Wall-clock latency on a shared machine: compare runs whose 1-minute load average shows it idle.
            "load_average_1m_before_latency": round(load_before, 2),
            "load_average_1m_after_latency": round(load_after, 2),
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
