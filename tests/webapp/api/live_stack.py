"""The serving stack inside the test process: the real inference engine (tiny base, real MiniLM router) and the
Django ASGI app, each under uvicorn on a free port, plus experts on disk with real routing signatures.

Used by the API and playground tests that need real tokens over real HTTP (the official `openai` client).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.workers.moe.servers import serve

TINY = "tiny:llama-2l"
# Two separable toy corpora: what each expert's routing signature is computed from.
CORPORA = {
    "cooking": [
        "Sear the steak in a hot cast-iron pan, then rest the meat for five minutes before slicing.",
        "Knead the bread dough until it is smooth and elastic, then let it rise until doubled in size.",
        "Simmer the tomato sauce with garlic, basil and olive oil for twenty minutes, stirring often.",
        "Whisk eggs, sugar and butter, fold in the flour and bake the cake at 180 degrees for 35 minutes.",
        "Blanch the green beans in salted boiling water and plunge them into ice water to keep them crisp.",
        "Caramelise the onions slowly over low heat until they turn deep golden brown and sweet.",
    ],
    "networking": [
        "Configure the VPN client with the gateway address and import the certificate before connecting.",
        "The firewall blocks inbound TCP traffic on port 22 unless the source address is on the allow list.",
        "DHCP leases an IP address to each laptop on the office network for twenty-four hours.",
        "Packets are routed between the two subnets by the core switch using static routes and VLAN tags.",
        "If DNS resolution fails, check the resolver settings and flush the local cache on the workstation.",
        "Wi-Fi access points use WPA3 enterprise authentication against the RADIUS server.",
    ],
}


@dataclass
class ExpertDir:
    name: str
    path: Path


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="session")
def expert_dirs(model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExpertDir]:
    """One tiny-base LoRA expert per toy corpus, with a MiniLM routing signature of that corpus."""
    from tests.workers.moe.conftest import load_tiny, write_expert
    from workers.ml.distill.signature import compute_signature
    from workers.ml.embedder import shared_embedder

    base = load_tiny(model_cache_dir)
    embedder = shared_embedder()
    made = {}
    for seed, (name, texts) in enumerate(CORPORA.items(), start=1):
        directory = tmp_path_factory.mktemp(f"expert-{name}")
        write_expert(base, directory, seed=seed)
        compute_signature(embedder, texts, k=2).save(directory)
        made[name] = ExpertDir(name, directory)
    return made


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The same converted-model cache as the pure ML tests (tests/workers/conftest.py)."""
    configured = os.environ.get("DISTILLERY_TEST_MODEL_CACHE")
    path = Path(configured) if configured else Path(__file__).resolve().parents[3] / "var" / "test-model-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def engine_service(model_cache_dir: Path) -> Any:
    from workers.moe.engine import Engine, EngineConfig
    from workers.moe.query_embedder import QueryEmbedder
    from workers.moe.router import Router
    from workers.moe.service import InferenceService, LocalBackend, RoutingService

    def make_engine() -> Engine:
        return Engine(EngineConfig(base_spec=TINY, model_cache_dir=model_cache_dir, device="cpu"), progress=_quiet)

    backend = LocalBackend(make_engine)
    backend.load()
    assert backend.ready(), backend.error
    service = InferenceService(RoutingService(Router(QueryEmbedder.load())), backend)
    yield service
    backend.engine.close()


@pytest.fixture(scope="session")
def engine_url(engine_service: Any) -> Iterator[str]:
    from workers.moe.server import create_app

    with serve(create_app(engine_service)) as url:
        yield url


@pytest.fixture
def live_engine(engine_url: str, settings: Any) -> str:
    settings.INFERENCE_URL = engine_url
    return engine_url


@pytest.fixture(scope="session")
def web_url() -> Iterator[str]:
    """Django's ASGI app under uvicorn (streaming as in production). Tests using it need transactional_db."""
    from django.db import connections

    from webapp.asgi import application

    # The server's threads open their own connections to the test database: close each at the end of its
    # request (as CONN_MAX_AGE=0 does), or they would outlive the test run and block the database's teardown.
    connections.settings["default"]["CONN_MAX_AGE"] = 0
    with serve(application) as url:
        yield url


def register_expert(organization: Any, name: str, location: str | Path, base_hash: str) -> Any:
    """An expert of `organization` whose one active version is the expert directory at `location` (a tiny base)."""
    from webapp.experts.models import Expert, ExpertVersion

    expert = Expert.objects.create(organization=organization, name=name, slug=Expert.unique_slug(organization, name))
    expert.active_version = ExpertVersion.objects.create(
        organization=organization,
        expert=expert,
        number=1,
        base_spec=TINY,
        base_hash=base_hash,
        recipe="kd",
        artifact_location=str(location),
    )
    expert.save()
    return expert
