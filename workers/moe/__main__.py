"""The resident inference engine: `python -m workers.moe [--port 8700]`.

One process holds the shared base model, the experts' LoRA weights and the router's embedder, and serves the
web app over a small HTTP API (workers/moe/server.py). The base and the embedder load in the background, so
/health answers at once ("loading" → "ok"). Every option also reads an environment variable, so the Procfile
and docker-compose start it with the same settings as the web app.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from workers.moe.service import InferenceService, LocalBackend, RoutingService, ServiceConfig, VllmBackend

logger = logging.getLogger("workers.moe")


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _parser() -> argparse.ArgumentParser:
    data_dir = Path(_env("DATA_DIR", "var"))
    parser = argparse.ArgumentParser(prog="python -m workers.moe", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=_env("INFERENCE_HOST", "127.0.0.1"), help="Bind address (private!).")
    parser.add_argument("--port", type=int, default=int(_env("INFERENCE_PORT", "8700")))
    parser.add_argument("--base", default=_env("MOE_BASE_MODEL", "packaged:smollm2-135m-instruct"))
    parser.add_argument("--model-cache-dir", default=_env("MODEL_CACHE_DIR", str(data_dir / "models")))
    parser.add_argument("--model-roots", default=_env("MODEL_ROOTS", ""), help="Comma-separated hf: directories.")
    parser.add_argument("--device", default=_env("INFERENCE_DEVICE", "auto"))
    parser.add_argument("--embedder", default=_env("MOE_EMBEDDER", "packaged:all-minilm-l6-v2"))
    parser.add_argument(
        "--query-weights", default=_env("MOE_QUERY_WEIGHTS", "auto"),
        help="The router's query encoder weights: auto (int8 where the CPU has the kernel), int8, bf16 (CPUs with "
        "native bf16), fp16 or fp32. bf16 and fp16 make the reference embedder's decisions exactly, int8 is faster.",
    )  # fmt: skip
    parser.add_argument("--backend", choices=["local", "vllm"], default=_env("INFERENCE_BACKEND", "local"))
    parser.add_argument("--max-batch-size", type=int, default=int(_env("ENGINE_MAX_BATCH_SIZE", "16")))
    parser.add_argument(
        "--adapter-memory-mb", type=int, default=int(_env("ENGINE_ADAPTER_MEMORY_MB", "1024")),
        help="Memory for loaded experts' LoRA weights; the least recently used are evicted beyond it.",
    )  # fmt: skip
    parser.add_argument(
        "--weights", choices=["auto", "bf16", "fp32"], default=_env("ENGINE_WEIGHTS", "auto"),
        help="The base's dtype: auto (the catalog's on a GPU; bf16 on a CPU with native bf16 for bases of 50M+ "
        "parameters, else fp32), bf16 or fp32.",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=int(_env("TORCH_THREADS_ENGINE", "1")))
    parser.add_argument("--vllm-url", default=_env("VLLM_URL", ""))
    parser.add_argument("--vllm-model", default=_env("VLLM_MODEL", ""))
    parser.add_argument("--log-level", default=_env("INFERENCE_LOG_LEVEL", "info"))
    return parser


def build_service(args: argparse.Namespace) -> tuple[InferenceService, threading.Thread]:
    """The service, and the one background thread that loads its slow parts (embedder, then base model).

    One thread, one model after the other: transformers builds a model under a process-wide "empty weights"
    patch of torch, so two models loading at once in two threads can corrupt each other ("Cannot copy out of
    meta tensor").
    """
    config = ServiceConfig(
        backend=args.backend,
        embedder=args.embedder,
        query_weights=args.query_weights,
        vllm_url=args.vllm_url,
        vllm_model=args.vllm_model,
        vllm_api_key=_env("VLLM_API_KEY", "EMPTY"),
    )
    loaders: list[Callable[[], None]] = []
    if config.backend == "vllm":
        backend: LocalBackend | VllmBackend = VllmBackend(config)
    else:

        def make_engine() -> object:
            from workers.moe.engine import Engine, EngineConfig

            roots = tuple(Path(root) for root in args.model_roots.split(",") if root.strip())
            return Engine(
                EngineConfig(
                    base_spec=args.base,
                    model_cache_dir=Path(args.model_cache_dir),
                    model_roots=roots,
                    device=args.device,
                    weights=args.weights,
                    max_batch_size=args.max_batch_size,
                    adapter_memory_bytes=args.adapter_memory_mb * 2**20,
                    expert_cache_dir=Path(args.model_cache_dir) / "experts",
                )
            )

        backend = LocalBackend(make_engine)
        loaders.append(backend.load)
    service = InferenceService(None, backend)

    def load_router() -> None:
        try:
            from workers.moe.query_embedder import QueryEmbedder, weight_dtype
            from workers.moe.router import Router

            embedder = QueryEmbedder.load(config.embedder, dtype=weight_dtype(config.query_weights))
            logger.info("router query path: %r", embedder)
            service.routing = RoutingService(Router(embedder))
        except Exception:
            logger.exception("the router's embedder %s could not be loaded", config.embedder)

    loaders.insert(0, load_router)  # the router first: it loads in about a second

    def load_all() -> None:
        for load in loaders:
            load()

    return service, threading.Thread(target=load_all, name="load-models", daemon=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from workers.moe.query_embedder import weight_dtype

    try:
        weight_dtype(args.query_weights)  # a typo stops the engine here, not later in its loader thread
    except ValueError as error:
        parser.error(f"--query-weights (MOE_QUERY_WEIGHTS): {error}")
    if args.weights not in ("auto", "bf16", "fp32"):  # argparse checks choices on the command line, not in defaults
        parser.error(f"--weights (ENGINE_WEIGHTS) can be auto, bf16 or fp32; not {args.weights!r}.")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from workers.ml.device import configure_torch_threads

    configure_torch_threads(args.threads)
    import uvicorn

    # Import the heavy modules here, before the loader thread starts: transformers' lazy module is not safe to
    # import from two threads at once (uvicorn's and the loader's; one gets an ImportError for a name that exists).
    import workers.moe.engine
    import workers.moe.router  # noqa: F401
    from workers.moe.server import create_app

    service, loader = build_service(args)
    loader.start()
    logger.info("inference engine on http://%s:%s (backend %s, base %s)", args.host, args.port, args.backend, args.base)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
