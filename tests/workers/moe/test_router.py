"""The MoE router: candidates, threshold fallback, top-k weights, the registry, vectorised scoring.

Ranking scores are a count-weighted soft maximum over each expert's centroids (`centroid_temperature`); the
fallback threshold is compared with the plain max cosine. Most geometric tests use one centroid per expert, or
equal counts, where noted.
"""

from __future__ import annotations

import math

import pytest
import torch

from workers.ml.distill.signature import RoutingSignature, compute_signature
from workers.moe.router import Router, RouterSettings, RoutingDecision, SignatureMismatch

DIM = 8
FAKE = "fake:axes"


class FakeEmbedder:
    """Maps each known text to a fixed unit vector: routing tests need geometry, not a language model."""

    name = FAKE
    dim = DIM

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {text: torch.nn.functional.normalize(torch.tensor(v), dim=0) for text, v in vectors.items()}
        self.calls = 0

    def embed_one(self, text: str) -> torch.Tensor:
        self.calls += 1
        return self.vectors[text]


def axis(index: int, *extra: tuple[int, float]) -> list[float]:
    vector = [0.0] * DIM
    vector[index] = 1.0
    for position, value in extra:
        vector[position] = value
    return vector


def signature(
    *centroids: list[float], embedder: str = FAKE, dim: int = DIM, counts: list[int] | None = None
) -> RoutingSignature:
    units = [torch.nn.functional.normalize(torch.tensor(c), dim=0).tolist() for c in centroids]
    return RoutingSignature(
        embedder=embedder, dim=dim, centroids=units, counts=counts if counts is not None else [1] * len(units)
    )


def soft_max_score(cosines: list[float], counts: list[int], tau: float) -> float:
    """The ranking score written out: tau * log sum_c (n_c / N) * exp(cos_c / tau), in float64."""
    total = sum(counts)
    return tau * math.log(sum(n / total * math.exp(c / tau) for c, n in zip(cosines, counts, strict=True)))


@pytest.fixture
def router() -> Router:
    embedder = FakeEmbedder(
        {
            "cooking": axis(0),
            "networking": axis(1),
            "tax": axis(2),
            "between cooking and networking": axis(0, (1, 0.9)),
            "off topic": axis(7, (0, 0.2)),
        }
    )
    router = Router(embedder)
    router.register("chef", signature(axis(0), axis(3)))
    router.register("netops", signature(axis(1)))
    router.register("accountant", signature(axis(2), axis(4), axis(5)))
    return router


LOW = RouterSettings(threshold=0.5)
PLAIN = RouterSettings(threshold=0.5, centroid_temperature=0.0)


def test_it_picks_the_expert_whose_centroid_is_closest(router: Router) -> None:
    candidates = ["chef", "netops", "accountant"]

    for query, expected in [("cooking", "chef"), ("networking", "netops"), ("tax", "accountant")]:
        decision = router.route(query, candidates, LOW)

        assert decision.experts == [(expected, 1.0)]
        assert not decision.fallback
        assert decision.best_score == pytest.approx(1.0)  # the plain max cosine
        assert decision.scores[0][0] == expected
        assert len(decision.scores) == 3
        # The ranking score of a multi-centroid expert is a count-weighted soft max: below its max cosine.
        assert decision.scores[0][1] <= 1.0 + 1e-6
        assert router.route(query, candidates, PLAIN).scores[0][1] == pytest.approx(1.0)


def test_it_never_chooses_an_expert_outside_the_candidates(router: Router) -> None:
    decision = router.route("cooking", ["netops", "accountant"], RouterSettings(threshold=-1.0, top_k=2))

    assert "chef" not in [expert_id for expert_id, _ in decision.experts]
    assert "chef" not in [expert_id for expert_id, _ in decision.scores]
    assert {expert_id for expert_id, _ in decision.experts} == {"netops", "accountant"}


def test_it_falls_back_to_the_base_below_the_threshold(router: Router) -> None:
    decision = router.route("off topic", ["chef", "netops", "accountant"], LOW)

    assert decision.fallback
    assert decision.experts == []
    # The scores are still reported (the UI draws the bars under the threshold line).
    cosine = 0.2 / math.sqrt(1.04)
    assert decision.best_score == pytest.approx(cosine, abs=1e-5)
    assert decision.scores[0][0] == "chef"
    # chef: centroids on axes 0 and 3 (cosines 0.196 and 0), one text each.
    assert decision.scores[0][1] == pytest.approx(soft_max_score([cosine, 0.0], [1, 1], 0.1), abs=1e-5)
    assert decision.threshold == 0.5


def test_it_answers_with_the_best_expert_anyway_without_fallback(router: Router) -> None:
    decision = router.route("off topic", ["chef", "netops"], RouterSettings(threshold=0.5, fallback_to_base=False))

    assert not decision.fallback
    assert decision.experts == [("chef", 1.0)]


def test_it_weights_the_top_k_by_a_softmax_of_their_cosines(router: Router) -> None:
    settings = RouterSettings(top_k=2, temperature=0.1, threshold=0.1)

    decision = router.route("between cooking and networking", ["chef", "netops", "accountant"], settings)

    (first, w1), (second, w2) = decision.experts
    cosines = dict(decision.scores)
    assert (first, second) == ("chef", "netops")
    assert w1 + w2 == pytest.approx(1.0)
    expected = torch.softmax(torch.tensor([cosines["chef"], cosines["netops"]]) / 0.1, dim=0)
    assert [w1, w2] == pytest.approx(expected.tolist(), abs=1e-6)
    assert w1 > w2
    # top_k larger than the candidates: every candidate, still summing to 1.
    every = router.route("cooking", ["chef", "netops"], RouterSettings(top_k=5, threshold=0.1))
    assert len(every.experts) == 2
    assert sum(weight for _, weight in every.experts) == pytest.approx(1.0)


def test_it_reports_unknown_candidate_ids_and_ignores_them(router: Router) -> None:
    decision = router.route("networking", ["ghost", "netops", "ghost", "gone"], LOW)

    assert decision.unknown == ["ghost", "gone"]
    assert decision.experts == [("netops", 1.0)]
    assert [expert_id for expert_id, _ in decision.scores] == ["netops"]


def test_it_falls_back_without_embedding_when_no_candidate_is_known(router: Router) -> None:
    embedder = router.embedder
    assert isinstance(embedder, FakeEmbedder)

    for candidates in ([], ["ghost"]):
        decision = router.route("cooking", candidates, LOW)

        assert decision.fallback
        assert decision.experts == []
        assert decision.scores == []
        assert decision.best_score is None
    assert embedder.calls == 0


def test_it_rejects_a_signature_of_another_embedder(router: Router) -> None:
    with pytest.raises(SignatureMismatch, match="packaged:other"):
        router.register("stranger", signature(axis(0), embedder="packaged:other"))
    with pytest.raises(SignatureMismatch, match="dimension"):
        router.register("short", signature([1.0, 0.0], dim=2))
    assert isinstance(SignatureMismatch("x"), ValueError)
    assert not router.known("stranger")
    assert not router.known("short")


def test_it_replaces_a_signature_registered_again(router: Router) -> None:
    assert router.route("tax", ["chef", "netops"], RouterSettings(threshold=-1.0)).experts[0][0] in {"chef", "netops"}

    router.register("netops", signature(axis(2)))  # netops now covers tax law

    decision = router.route("tax", ["chef", "netops"], LOW)
    assert decision.experts == [("netops", 1.0)]
    assert router.route("networking", ["netops"], LOW).fallback
    assert sorted(router.ids()) == ["accountant", "chef", "netops"]


def test_it_forgets_an_unregistered_expert(router: Router) -> None:
    router.unregister("chef")
    router.unregister("chef")  # idempotent

    assert not router.known("chef")
    decision = router.route("cooking", ["chef", "netops"], LOW)
    assert decision.unknown == ["chef"]
    assert decision.fallback


def test_it_serialises_a_decision_for_the_api() -> None:
    decision = RoutingDecision(
        experts=[("a", 0.75), ("b", 0.25)],
        fallback=False,
        best_score=0.61,
        scores=[("a", 0.61), ("b", 0.55)],
        unknown=["c"],
        threshold=0.3,
        embed_ms=3.2,
        score_ms=0.1,
    )

    assert decision.to_json() == {
        "experts": [{"id": "a", "weight": 0.75}, {"id": "b", "weight": 0.25}],
        "fallback": False,
        "best_score": 0.61,
        "threshold": 0.3,
        "scores": [{"id": "a", "score": 0.61}, {"id": "b", "score": 0.55}],
        "unknown": ["c"],
        "timing_ms": {"embed": 3.2, "score": 0.1},
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"threshold": 1.5}, "threshold"),
        ({"fallback_to_base": "yes"}, "fallback_to_base"),
        ({"centroid_temperature": -0.1}, "centroid_temperature"),
        ({"centroid_temperature": float("inf")}, "centroid_temperature"),
        ({"centroid_temperature": float("nan")}, "centroid_temperature"),
        ({"centroid_temperature": "0.1"}, "centroid_temperature"),
    ],
)
def test_it_rejects_invalid_settings(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RouterSettings(**options)  # type: ignore[arg-type]


def test_it_documents_every_setting() -> None:
    import dataclasses

    assert all(spec.metadata.get("help") for spec in dataclasses.fields(RouterSettings))


# fp16 rounds each centroid coordinate by at most 2^-11 of it: a cosine of unit vectors moves by at most that much.
HALF_ERROR = 2**-11


class RandomEncoder:
    name, dim = "fake:random", 32

    def embed_one(self, text: str) -> torch.Tensor:
        raise AssertionError("route_embedding only")


def random_router(k_max: int, seed: int = 0) -> tuple[Router, dict[str, RoutingSignature], torch.Generator]:
    """1,000 experts of 1..k_max random unit centroids with random counts (1..999 texts each)."""
    generator = torch.Generator().manual_seed(seed)
    router = Router(RandomEncoder())
    signatures = {}
    for index in range(1000):
        k = int(torch.randint(1, k_max + 1, (1,), generator=generator))
        centroids = torch.nn.functional.normalize(torch.randn(k, RandomEncoder.dim, generator=generator), dim=-1)
        counts = torch.randint(1, 1000, (k,), generator=generator).tolist()
        signatures[f"e{index}"] = RoutingSignature("fake:random", RandomEncoder.dim, centroids.tolist(), counts)
        router.register(f"e{index}", signatures[f"e{index}"])
    return router, signatures, generator


def test_it_scores_1000_experts_by_max_cosine_as_a_naive_loop_does_at_centroid_temperature_0() -> None:
    router, signatures, generator = random_router(k_max=4)
    settings = RouterSettings(top_k=3, threshold=-1.0, centroid_temperature=0.0)

    for trial in range(5):
        query = torch.nn.functional.normalize(torch.randn(RandomEncoder.dim, generator=generator), dim=0)
        # Every expert, then a random half (the gather path), then a handful, in a shuffled order.
        count = [1000, 500, 7, 300, 1][trial]
        candidates = [f"e{int(i)}" for i in torch.randperm(1000, generator=generator)[:count]]

        decision = router.route_embedding(query, candidates, settings)

        naive = {eid: max(float(torch.tensor(c) @ query) for c in signatures[eid].centroids) for eid in candidates}
        ranked = sorted(naive, key=lambda eid: -naive[eid])
        # The chosen experts, their scores and the threshold's cosine are exact; the others' scores are within
        # the fp16 copy's rounding when many rows are scored (HALF_PRECISION_MIN_ROWS).
        assert [eid for eid, _ in decision.experts] == ranked[:3]
        assert dict(decision.scores[:3]) == pytest.approx({eid: naive[eid] for eid in ranked[:3]}, abs=1e-5)
        assert decision.best_score == pytest.approx(max(naive.values()), abs=1e-5)
        assert dict(decision.scores) == pytest.approx(naive, abs=HALF_ERROR)
        assert sorted(eid for eid, _ in decision.scores) == sorted(naive)


@pytest.mark.parametrize("tau", [0.1, 0.02, 1.0])
def test_it_scores_1000_experts_by_the_soft_maximum_as_a_naive_loop_does(tau: float) -> None:
    router, signatures, generator = random_router(k_max=16, seed=1)
    settings = RouterSettings(top_k=3, threshold=-1.0, centroid_temperature=tau)

    for count in (1000, 500, 7, 1):
        query = torch.nn.functional.normalize(torch.randn(RandomEncoder.dim, generator=generator), dim=0)
        candidates = [f"e{int(i)}" for i in torch.randperm(1000, generator=generator)[:count]]

        decision = router.route_embedding(query, candidates, settings)

        cosines = {eid: [float(torch.tensor(c) @ query) for c in signatures[eid].centroids] for eid in candidates}
        naive = {eid: soft_max_score(cosines[eid], signatures[eid].counts, tau) for eid in candidates}
        ranked = sorted(naive, key=lambda eid: -naive[eid])
        assert [eid for eid, _ in decision.scores[:3]] == ranked[:3]
        assert dict(decision.scores[:3]) == pytest.approx({eid: naive[eid] for eid in ranked[:3]}, abs=1e-5)
        assert dict(decision.scores) == pytest.approx(naive, abs=HALF_ERROR)
        assert [eid for eid, _ in decision.experts] == ranked[:3]
        # The threshold's number is the plain max cosine, whatever ranks first.
        assert decision.best_score == pytest.approx(max(max(values) for values in cosines.values()), abs=1e-5)
        # The weights are a softmax of the ranking scores at `temperature`.
        top = torch.tensor([naive[eid] for eid in ranked[:3]], dtype=torch.float64)
        expected = torch.softmax(top / settings.temperature, dim=0).tolist()
        assert [weight for _, weight in decision.experts] == pytest.approx(expected, abs=1e-4)


def test_the_soft_maximum_is_stable_at_a_tiny_centroid_temperature() -> None:
    router, signatures, generator = random_router(k_max=16, seed=2)
    query = torch.nn.functional.normalize(torch.randn(RandomEncoder.dim, generator=generator), dim=0)
    ids = list(signatures)

    tiny = router.route_embedding(query, ids, RouterSettings(threshold=-1.0, centroid_temperature=1e-6))
    plain = router.route_embedding(query, ids, RouterSettings(threshold=-1.0, centroid_temperature=0.0))

    assert all(math.isfinite(score) for _, score in tiny.scores)
    # tau * log(n_c / N) vanishes with tau: the plain max in the limit.
    assert dict(tiny.scores) == pytest.approx(dict(plain.scores), abs=1e-4)


def test_centroid_temperature_0_ranks_by_the_plain_max_cosine() -> None:
    router = Router(FakeEmbedder({"q": axis(0, (1, 1.0))}))  # cos 0.707 to axes 0 and 1
    # big: one centroid right on the query's side, many texts elsewhere; small: a single, slightly closer centroid.
    router.register("big", signature(axis(0, (1, 0.8)), axis(5), counts=[1, 99]))
    router.register("small", signature(axis(0, (1, 0.9)), counts=[3]))

    plain = router.route("q", ["big", "small"], RouterSettings(threshold=0.5, centroid_temperature=0.0))
    soft = router.route("q", ["big", "small"], RouterSettings(threshold=0.5, centroid_temperature=0.1))

    cos_big, cos_small = 1.8 / math.sqrt(2 * 1.64), 1.9 / math.sqrt(2 * 1.81)
    assert dict(plain.scores) == pytest.approx({"big": cos_big, "small": cos_small}, abs=1e-5)
    assert plain.experts[0][0] == "small"
    # At 0.1, big's matching centroid stands for 1% of its texts: its score drops by 0.1 * log(100) = 0.46.
    assert soft.experts[0][0] == "small"
    assert dict(soft.scores)["big"] == pytest.approx(soft_max_score([cos_big, 0.0], [1, 99], 0.1), abs=1e-5)
    assert plain.best_score == soft.best_score == pytest.approx(cos_small, abs=1e-5)


def test_a_big_cluster_outweighs_a_tiny_one_at_equal_cosine() -> None:
    router = Router(FakeEmbedder({"q": axis(0)}))
    # Both experts have a centroid at cosine 0.6 to the query; for "broad" it holds 90 of 100 texts, for
    # "niche" 1 of 100 (the rest of each lies orthogonal to the query).
    near = axis(0, (1, 4 / 3))  # cosine 0.6
    router.register("niche", signature(near, axis(2), counts=[1, 99]))
    router.register("broad", signature(near, axis(3), counts=[90, 10]))

    decision = router.route("q", ["niche", "broad"], RouterSettings(threshold=0.5, top_k=2))

    assert [expert_id for expert_id, _ in decision.scores] == ["broad", "niche"]
    scores = dict(decision.scores)
    assert scores["broad"] == pytest.approx(soft_max_score([0.6, 0.0], [90, 10], 0.1), abs=1e-5)
    assert scores["niche"] == pytest.approx(soft_max_score([0.6, 0.0], [1, 99], 0.1), abs=1e-5)
    assert decision.experts[0][0] == "broad"
    assert decision.experts[0][1] > 0.99  # a lead of ~0.45 at temperature 0.05
    assert decision.best_score == pytest.approx(0.6, abs=1e-5)
    # The plain max cannot tell them apart: a tie, kept in the caller's order.
    plain = router.route("q", ["niche", "broad"], RouterSettings(threshold=0.5, centroid_temperature=0.0))
    assert [expert_id for expert_id, _ in plain.scores] == ["niche", "broad"]


def test_the_fallback_compares_the_plain_max_cosine_not_the_ranking_score() -> None:
    router = Router(FakeEmbedder({"q": axis(0)}))
    # The expert's nearest centroid (cosine 0.6) holds 1 of its 1,000 texts: its ranking score is
    # 0.6 + 0.1 * log(1/1000 + 999/1000 * exp(-6)) ~ 0.03, below the threshold; its best centroid is above.
    router.register("specialist", signature(axis(0, (1, 4 / 3)), axis(1), counts=[1, 999]))
    settings = RouterSettings(threshold=0.3)

    decision = router.route("q", ["specialist"], settings)

    ((_, score),) = decision.scores
    assert score < settings.threshold
    assert decision.best_score == pytest.approx(0.6, abs=1e-5)
    assert not decision.fallback
    assert decision.experts == [("specialist", 1.0)]
    # Above the best cosine it does fall back.
    assert router.route("q", ["specialist"], RouterSettings(threshold=0.65)).fallback


def test_the_threshold_uses_the_best_cosine_of_any_candidate_not_only_of_the_top_ranked() -> None:
    router = Router(FakeEmbedder({"q": axis(0)}))
    router.register("broad", signature(axis(0, (1, 1.0)), counts=[50]))  # cosine 0.707, score 0.707
    router.register("niche", signature(axis(0, (1, 0.5)), axis(4), counts=[1, 999]))  # cosine 0.894, score ~0.2

    decision = router.route("q", ["broad", "niche"], RouterSettings(threshold=0.8))

    assert decision.scores[0][0] == "broad"
    assert decision.best_score == pytest.approx(2 / math.sqrt(5), abs=1e-5)
    assert not decision.fallback
    assert decision.experts == [("broad", 1.0)]


def test_it_treats_missing_counts_as_equal_and_rejects_negative_ones() -> None:
    router = Router(FakeEmbedder({"q": axis(0)}))
    router.register("zeros", signature(axis(0), axis(1), counts=[0, 0]))
    router.register("ones", signature(axis(0), axis(1), counts=[1, 1]))

    decision = router.route("q", ["zeros", "ones"], RouterSettings(threshold=0.5))

    assert dict(decision.scores)["zeros"] == pytest.approx(dict(decision.scores)["ones"], abs=1e-6)
    with pytest.raises(ValueError, match="negative"):
        router.register("bad", signature(axis(0), axis(1), counts=[3, -1]))
    assert not router.known("bad")


def test_a_centroid_that_stands_for_no_text_counts_for_the_threshold_but_not_the_ranking() -> None:
    router = Router(FakeEmbedder({"q": axis(0)}))
    router.register("stray", signature(axis(0), axis(1), counts=[0, 10]))  # the query's own direction counts 0
    router.register("steady", signature(axis(1, (0, 0.5)), counts=[5]))  # cosine 0.5 / sqrt(1.25) = 0.447

    decision = router.route("q", ["stray", "steady"], RouterSettings(threshold=0.9))

    scores = dict(decision.scores)
    assert scores["stray"] == pytest.approx(0.0, abs=1e-6)  # only the orthogonal centroid ranks
    assert scores["steady"] == pytest.approx(1 / math.sqrt(5), abs=1e-6)
    assert decision.experts[0][0] == "steady"
    assert decision.best_score == pytest.approx(1.0)  # ... yet the query is on the topic of a centroid


@pytest.fixture(scope="module")
def minilm_router() -> Router:
    from workers.ml.embedder import shared_embedder

    embedder = shared_embedder()
    corpora = {
        "cooking": [
            "Whisk the eggs with sugar until pale, then fold in the flour gently.",
            "Roast the chicken at 200 degrees for an hour and baste it with butter.",
            "Simmer the tomato sauce with garlic, basil and olive oil for twenty minutes.",
            "Knead the bread dough for ten minutes and let it rise until doubled.",
            "Season the steak with salt and pepper and sear it in a hot cast iron pan.",
        ],
        "networking": [
            "Configure the router's DHCP server to hand out addresses in the 10.0.0.0/24 subnet.",
            "A TCP handshake exchanges SYN, SYN-ACK and ACK packets before data flows.",
            "Set the VLAN tag on the switch port and trunk it to the core switch.",
            "DNS resolves host names to IP addresses; check the resolver with dig.",
            "The firewall drops inbound packets on port 22 except from the VPN range.",
        ],
        "tax": [
            "Capital gains on shares held over a year are taxed at the long-term rate.",
            "Self-employed taxpayers may deduct home office expenses under section 280A.",
            "VAT is charged on the supply of goods and services and reclaimed as input tax.",
            "An estate above the exemption threshold owes inheritance tax within six months.",
            "File the annual income tax return by April 15 or request an extension.",
        ],
    }
    router = Router(embedder)
    for name, texts in corpora.items():
        router.register(name, compute_signature(embedder, texts, k=2))
    return router


@pytest.mark.realmodel
def test_it_routes_questions_to_the_right_toy_corpus_with_minilm(minilm_router: Router) -> None:
    settings = RouterSettings()
    questions = {
        "How long should I let pizza dough proof before baking?": "cooking",
        "Why does my laptop get no IP address from the wifi router?": "networking",
        "Can I deduct the cost of my home office from my taxes?": "tax",
        "What temperature should I cook a pork roast at?": "cooking",
        "How do I open a port in the firewall for SSH?": "networking",
    }

    for question, expected in questions.items():
        decision = minilm_router.route(question, ["cooking", "networking", "tax"], settings)

        assert decision.experts == [(expected, 1.0)], (question, decision.scores)
        assert decision.embed_ms > 0


@pytest.mark.realmodel
def test_it_falls_back_on_an_off_topic_question_with_minilm(minilm_router: Router) -> None:
    decision = minilm_router.route(
        "Who won the football world cup in 1998?", ["cooking", "networking", "tax"], RouterSettings()
    )

    assert decision.fallback, decision.scores
    assert decision.best_score is not None
    assert decision.best_score < RouterSettings().threshold
