"""The router's half-precision first pass: same decisions as float32 scoring, whatever the data.

With at least HALF_PRECISION_MIN_ROWS centroid rows, cosines are first read from an fp16 copy of the centroids and
only the experts that could change the decision are scored again in float32. These tests route the same queries
through a router forced onto each path and compare: chosen experts, their order and weights, and the best cosine
(the threshold's number) must be the float32 ones, also for near-ties closer than fp16's rounding.
"""

from __future__ import annotations

import pytest
import torch

from workers.ml.distill.signature import RoutingSignature
from workers.moe import router as router_module
from workers.moe.router import Router, RouterSettings, RoutingDecision

DIM = 384  # MiniLM's: the rounding of fp16 coordinates depends on their size, so test at the real width


class RandomEncoder:
    name, dim = "fake:random", DIM

    def embed_one(self, text: str) -> torch.Tensor:
        raise AssertionError("route_embedding only")


def random_signatures(count: int, k_max: int, generator: torch.Generator) -> dict[str, RoutingSignature]:
    signatures = {}
    for index in range(count):
        k = int(torch.randint(1, k_max + 1, (1,), generator=generator))
        centroids = torch.nn.functional.normalize(torch.randn(k, DIM, generator=generator), dim=-1)
        counts = torch.randint(1, 1000, (k,), generator=generator).tolist()
        signatures[f"e{index}"] = RoutingSignature(RandomEncoder.name, DIM, centroids.tolist(), counts)
    return signatures


def routers(
    signatures: dict[str, RoutingSignature], monkeypatch: pytest.MonkeyPatch, half_min_rows: int = 0
) -> tuple[Router, Router]:
    """(float32 only, with the fp16 first pass), over the same signatures."""
    exact, fast = Router(RandomEncoder()), Router(RandomEncoder())
    for expert_id, signature in signatures.items():
        exact.register(expert_id, signature)
        fast.register(expert_id, signature)
    monkeypatch.setattr(router_module, "HALF_PRECISION_MIN_ROWS", 10**9)
    exact._snapshot()  # stacks are built on first use, under the threshold in force then
    monkeypatch.setattr(router_module, "HALF_PRECISION_MIN_ROWS", half_min_rows)
    if fast._snapshot().packed_half is None:
        pytest.skip("this torch build has no fbgemm fp16 matrices: the router scores in float32 only")
    return exact, fast


def assert_same_decision(fast: RoutingDecision, exact: RoutingDecision, top_k: int) -> None:
    assert [eid for eid, _ in fast.experts] == [eid for eid, _ in exact.experts]
    assert [weight for _, weight in fast.experts] == pytest.approx([weight for _, weight in exact.experts], abs=1e-5)
    assert fast.fallback == exact.fallback
    assert fast.best_score == pytest.approx(exact.best_score, abs=1e-6)
    assert [eid for eid, _ in fast.scores[:top_k]] == [eid for eid, _ in exact.scores[:top_k]]
    assert dict(fast.scores[:top_k]) == pytest.approx(dict(exact.scores[:top_k]), abs=1e-6)
    # Below the chosen ones, every score is still within fp16's rounding of the float32 one.
    assert dict(fast.scores) == pytest.approx(dict(exact.scores), abs=2**-11)


@pytest.mark.parametrize("tau", [0.1, 0.0, 0.02])
def test_it_decides_as_float32_scoring_does_on_random_experts(tau: float, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(7)
    signatures = random_signatures(300, 16, generator)
    exact, fast = routers(signatures, monkeypatch)
    ids = list(signatures)

    for trial in range(40):
        # Queries near an expert's centroid as well as random ones: close races at the top are the hard case.
        if trial % 2:
            query = torch.randn(DIM, generator=generator)
        else:
            anchor = torch.tensor(signatures[ids[trial]].centroids[0])
            query = anchor + 0.3 * torch.randn(DIM, generator=generator) / DIM**0.5
        query = torch.nn.functional.normalize(query, dim=0)
        top_k = 1 + trial % 4
        # All experts (the fp16 pass), most of them in a shuffled order (fp16 then a gather), or a few (float32).
        count = [300, 200, 12][trial % 3]
        candidates = [ids[int(i)] for i in torch.randperm(len(ids), generator=generator)[:count]]
        settings = RouterSettings(top_k=top_k, threshold=0.3, centroid_temperature=tau)

        assert_same_decision(
            fast.route_embedding(query, candidates, settings),
            exact.route_embedding(query, candidates, settings),
            top_k,
        )


def test_it_breaks_a_near_tie_closer_than_fp16_rounding_as_float32_does(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(3)
    signatures = random_signatures(200, 8, generator)
    query = torch.nn.functional.normalize(torch.randn(DIM, generator=generator), dim=0)
    # Two rivals whose cosines to the query differ by ~1e-6, far below fp16's ~1e-4 rounding of a coordinate.
    side = torch.nn.functional.normalize(torch.randn(DIM, generator=generator), dim=0)
    side = torch.nn.functional.normalize(side - (side @ query) * query, dim=0)  # orthogonal to the query
    for name, angle in (("rival-a", 0.500000), ("rival-b", 0.500002)):
        angle_t = torch.tensor(angle, dtype=torch.float64)
        centroid = (torch.cos(angle_t) * query.double() + torch.sin(angle_t) * side.double()).float()
        signatures[name] = RoutingSignature(RandomEncoder.name, DIM, [centroid.tolist()], [10])
    exact, fast = routers(signatures, monkeypatch)
    settings = RouterSettings(top_k=1, threshold=0.0, centroid_temperature=0.1)

    fast_decision = fast.route_embedding(query, list(signatures), settings)
    exact_decision = exact.route_embedding(query, list(signatures), settings)

    assert exact_decision.experts[0][0] == "rival-a"  # the smaller angle: the larger cosine
    assert_same_decision(fast_decision, exact_decision, 1)


def test_it_compares_the_threshold_with_the_float32_best_cosine(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(5)
    signatures = random_signatures(200, 8, generator)
    exact, fast = routers(signatures, monkeypatch)
    query = torch.nn.functional.normalize(torch.randn(DIM, generator=generator), dim=0)
    best = exact.route_embedding(query, list(signatures), RouterSettings(threshold=-1.0)).best_score
    assert best is not None

    for threshold in (best - 1e-7, best + 1e-7):  # just either side of the float32 value
        settings = RouterSettings(threshold=threshold)
        decision = fast.route_embedding(query, list(signatures), settings)

        assert decision.best_score == pytest.approx(best, abs=1e-7)
        assert decision.fallback == exact.route_embedding(query, list(signatures), settings).fallback


def test_it_uses_the_half_copy_only_from_many_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    router = Router(RandomEncoder())
    for expert_id, signature in random_signatures(10, 4, generator).items():
        router.register(expert_id, signature)
    monkeypatch.setattr(router_module, "HALF_PRECISION_MIN_ROWS", 10**9)

    assert router._snapshot().packed_half is None
    router.unregister("e0")  # a registration change rebuilds the stack under the threshold in force now
    monkeypatch.setattr(router_module, "HALF_PRECISION_MIN_ROWS", 1)
    stack = router._snapshot()
    if stack.packed_half is None:
        pytest.skip("this torch build has no fbgemm fp16 matrices")
    assert stack.row_error is not None
    assert float(stack.row_error.max()) <= 2**-11  # |c - half(c)| <= 2^-11 |c| for a unit vector


def test_it_reuses_the_plan_of_a_candidate_list_and_bounds_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(2)
    router = Router(RandomEncoder())
    for expert_id, signature in random_signatures(40, 4, generator).items():
        router.register(expert_id, signature)
    query = torch.nn.functional.normalize(torch.randn(DIM, generator=generator), dim=0)
    settings = RouterSettings(threshold=-1.0)

    first = router.route_embedding(query, ["e1", "e2", "nobody"], settings)
    stack = router._snapshot()
    plan = stack.plans[("e1", "e2", "nobody")]
    again = router.route_embedding(query, ["e1", "e2", "nobody"], settings)

    assert stack.plans[("e1", "e2", "nobody")] is plan
    assert again.scores == first.scores
    assert again.unknown == first.unknown == ["nobody"]
    again.unknown.append("mutated")  # a decision's lists are its own, not the cached plan's
    assert router.route_embedding(query, ["e1", "e2", "nobody"], settings).unknown == ["nobody"]
    for index in range(3 * router_module.PLAN_CACHE_SIZE):
        router.route_embedding(query, [f"e{index % 40}", "e0"], settings)
    assert len(stack.plans) <= router_module.PLAN_CACHE_SIZE
    router.unregister("e2")  # a new snapshot: plans of the old one are not reused
    decision = router.route_embedding(query, ["e1", "e2", "nobody"], settings)
    assert decision.unknown == ["e2", "nobody"]
