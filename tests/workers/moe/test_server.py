"""The engine's internal HTTP API (workers/moe/server.py) over the real engine with a tiny base: health while
loading and after, generation whole and streamed, routing among given candidates, and clear 400s."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from starlette.testclient import TestClient

from tests.workers.moe.conftest import write_expert
from workers.ml.distill.signature import RoutingSignature
from workers.moe.adapters import ExpertRef
from workers.moe.engine import Engine
from workers.moe.router import Router
from workers.moe.server import create_app
from workers.moe.service import InferenceService, LocalBackend, RoutingService

DIM = 4


class AxisEmbedder:
    """Texts mentioning 'bread' point along axis 0, 'vpn' along axis 1, anything else along axis 3."""

    name = "fake:axes"
    dim = DIM

    def embed_one(self, text: str) -> torch.Tensor:
        vector = torch.zeros(DIM)
        lowered = text.lower()
        vector[0 if "bread" in lowered else 1 if "vpn" in lowered else 3] = 1.0
        return vector


def signature_along(axis: int) -> RoutingSignature:
    centroid = [1.0 if index == axis else 0.0 for index in range(DIM)]
    return RoutingSignature(embedder=AxisEmbedder.name, dim=DIM, centroids=[centroid], counts=[10])


@pytest.fixture(scope="module")
def signed_experts(make_expert: Callable[..., ExpertRef]) -> dict[str, ExpertRef]:
    bread, vpn = make_expert(101), make_expert(102)
    signature_along(0).save(Path(bread.location))
    signature_along(1).save(Path(vpn.location))
    return {"bread": bread, "vpn": vpn}


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[TestClient]:
    backend = LocalBackend(lambda: engine)
    backend.load()
    service = InferenceService(RoutingService(Router(AxisEmbedder())), backend)
    with TestClient(create_app(service)) as test_client:
        yield test_client


def candidates(experts: dict[str, ExpertRef]) -> list[dict[str, str]]:
    return [{"id": ref.id, "location": ref.location} for ref in experts.values()]


ROUTER = {"top_k": 1, "temperature": 0.05, "threshold": 0.5, "fallback_to_base": True}


def test_health_says_loading_until_the_base_is_ready() -> None:
    service = InferenceService(None, LocalBackend(lambda: None))
    with TestClient(create_app(service)) as loading:
        response = loading.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "loading"
        refused = loading.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
        assert refused.status_code == 503


def test_health_reports_the_base_and_the_loaded_experts(client: TestClient, engine: Engine) -> None:
    report = client.get("/health").json()
    assert report["status"] == "ok"
    assert report["base"]["content_hash"] == engine.base_identity["content_hash"]
    assert isinstance(report["experts_loaded"], list)


def test_it_generates_a_whole_answer(client: TestClient) -> None:
    response = client.post("/generate", json={"prompt": "Hello", "max_tokens": 5, "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    assert body["route"] is None
    assert body["completion_tokens"] == 5 or body["finish_reason"] == "stop"
    assert body["prompt_tokens"] > 0
    assert body["text"]


def test_it_streams_ndjson_deltas_that_add_up_to_the_answer(client: TestClient, make_expert: Any) -> None:
    expert = make_expert(103)
    payload = {
        "messages": [{"role": "user", "content": "Tell me something."}],
        "experts": [{"id": expert.id, "location": expert.location, "weight": 1.0}],
        "max_tokens": 8,
        "temperature": 0,
    }
    whole = client.post("/generate", json=payload).json()
    with client.stream("POST", "/generate", json={**payload, "stream": True}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[-1]["type"] == "finished"
    deltas = [event["text"] for event in events if event["type"] == "delta"]
    assert len(deltas) >= 2
    assert "".join(deltas) == events[-1]["text"] == whole["text"]


def test_it_routes_among_the_given_candidates_only(client: TestClient, signed_experts: dict[str, ExpertRef]) -> None:
    bread_only = [candidates(signed_experts)[0]]
    decision = client.post(
        "/route", json={"query": "My VPN is down", "candidates": bread_only, "settings": ROUTER}
    ).json()
    assert [expert_id for expert_id, _ in decision["scores"]] == [signed_experts["bread"].id]
    assert decision["fallback"] is True  # the VPN expert scores best but is not a candidate

    both = client.post(
        "/route", json={"query": "My VPN is down", "candidates": candidates(signed_experts), "settings": ROUTER}
    ).json()
    assert both["experts"] == [[signed_experts["vpn"].id, 1.0]]
    assert both["scores"][0] == [signed_experts["vpn"].id, 1.0]
    assert both["embed_ms"] >= 0


def test_a_routed_generation_names_its_decision_first(client: TestClient, signed_experts: dict[str, ExpertRef]) -> None:
    payload = {
        "prompt": "Bread",
        "route": {"query": "How long does bread rise?", "candidates": candidates(signed_experts), "settings": ROUTER},
        "max_tokens": 3,
        "temperature": 0,
        "stream": True,
    }
    with client.stream("POST", "/generate", json=payload) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[0]["type"] == "route"
    assert events[0]["decision"]["experts"] == [[signed_experts["bread"].id, 1.0]]
    assert events[-1]["type"] == "finished"


def test_a_candidate_without_a_signature_is_never_chosen(client: TestClient, make_expert: Any) -> None:
    unsigned = make_expert(104)
    decision = client.post(
        "/route",
        json={"query": "bread", "candidates": [{"id": unsigned.id, "location": unsigned.location}], "settings": ROUTER},
    ).json()
    assert decision["experts"] == []
    assert unsigned.id in decision["unusable"]


def test_an_expert_of_another_base_is_refused_with_a_clear_400(
    client: TestClient, tiny_base: Any, tmp_path: Path
) -> None:
    foreign = write_expert(tiny_base, tmp_path / "foreign", seed=7, content_hash="0" * 64)
    payload = {"prompt": "Hi", "experts": [{"id": "foreign", "location": str(foreign)}], "max_tokens": 2}
    response = client.post("/generate", json=payload)
    assert response.status_code == 400
    assert "0000" in response.json()["error"]["message"]
    assert client.post("/experts/load", json={"id": "foreign", "location": str(foreign)}).status_code == 400


def test_a_new_expert_is_served_without_a_restart(client: TestClient, tiny_base: Any, tmp_path: Path) -> None:
    fresh = write_expert(tiny_base, tmp_path / "fresh", seed=55)
    loaded = client.post("/experts/load", json={"id": "fresh-55", "location": str(fresh)})
    assert loaded.status_code == 200
    assert "fresh-55" in client.get("/health").json()["experts_loaded"]


@pytest.mark.parametrize(
    "payload",
    [
        {"prompt": "Hi", "max_tokens": 0},
        {"prompt": "Hi", "temperature": -1},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"prompt": "Hi", "experts": "ev1"},
        {"prompt": "Hi", "experts": [{"id": "missing", "location": "/nowhere"}]},
    ],
)
def test_bad_requests_are_400_with_a_message(client: TestClient, payload: dict[str, Any]) -> None:
    response = client.post("/generate", json=payload)
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_a_body_that_is_not_json_is_400(client: TestClient) -> None:
    assert client.post("/generate", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/route", json=[1, 2]).status_code == 400
    assert client.post("/route", json={"query": "x", "settings": {"top_k": 0}}).status_code == 400


def test_a_recomputed_signature_is_read_again_when_its_fingerprint_changes(
    client: TestClient, make_expert: Any
) -> None:
    expert = make_expert(105)
    signature_along(0).save(Path(expert.location))
    candidate = {"id": expert.id, "location": expert.location, "signature": "first"}
    body = {"query": "bread", "candidates": [candidate], "settings": ROUTER}
    assert client.post("/route", json=body).json()["experts"] == [[expert.id, 1.0]]

    signature_along(1).save(Path(expert.location))  # recomputed: now it knows VPNs, not bread
    assert client.post("/route", json=body).json()["experts"] == [[expert.id, 1.0]], "same fingerprint: cached"
    body["candidates"] = [{**candidate, "signature": "second"}]
    assert client.post("/route", json=body).json()["experts"] == []
    assert client.post("/route", json={**body, "query": "vpn"}).json()["experts"] == [[expert.id, 1.0]]
