"""What another org sees of a shared expert: every number; no example answers unless the owner shares the samples;
never the owner's endpoint URL or the server's paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from webapp.experts.privacy import WITHHELD_NOTE, WITHHELD_URL, PublicView, endpoint_urls
from workers.ml.distill.config import DistillConfig, EndpointTeacherConfig
from workers.ml.distill.evaluate import LMScores, QAExample
from workers.ml.distill.export import build_metrics, render_card


def scores(perplexity: float) -> LMScores:
    return LMScores(perplexity=perplexity, bits_per_byte=perplexity / 10, mean_nll=1.0, tokens=100, bytes=400)


def qa_metrics(judge: dict[str, Any] | None = None) -> dict[str, Any]:
    examples = [
        QAExample(f"QUESTION-{n}?", f"REFERENCE-{n}", f"ANSWER-{n}", n / 12, judge_grade=3 if judge else None)
        for n in range(12)
    ]
    return build_metrics(
        base=scores(30.0),
        expert=scores(20.0),
        teacher=scores(10.0),
        qa={"base": 0.1, "expert": 0.4, "teacher": 0.6},
        qa_examples=examples,
        qa_source="held-out",
        qa_judge=judge,
    )


def card_for(metrics: dict[str, Any], tmp_path: Path) -> str:
    """The card the real exporter writes for these metrics."""
    return render_card(
        config=DistillConfig(tmp_path / "run", tmp_path / "cache", recipe="qa"),
        config_json={},
        base_identity={"spec": "tiny:llama-2l", "content_hash": "ab" * 32},
        teacher_label="Big teacher",
        metrics=metrics,
        data_stats={"train_chunks": 12},
        signature=None,
        adapter_config={"r": 4},
    )


@pytest.mark.parametrize("judge", [None, {"judge": "big", "mean_grade": {"base": 1.0, "expert": 4.0}}])
def test_it_takes_every_example_answer_out_of_a_real_card_and_keeps_the_rest(
    tmp_path: Path, judge: dict[str, Any] | None
) -> None:
    card = card_for(qa_metrics(judge), tmp_path)
    assert "QUESTION-11?" in card  # the exporter quotes them
    assert "REFERENCE-0" in card

    public = PublicView(samples=False).card(card)

    for text in ("QUESTION-", "ANSWER-", "REFERENCE-", "Best answers:", "Worst answers:"):
        assert text not in public
    assert public.count(WITHHELD_NOTE) == 1
    assert "| expert | 0.400 |" in public  # the scores stay
    assert "**Gap closed**" in public
    # Everything before and after the tables is kept as it was.
    before, after = card.split("Best answers:")[0], card.split("## Intended use")[1]
    assert public.startswith(before)
    assert public.endswith("## Intended use" + after)
    assert f"{WITHHELD_NOTE}\n\n## Intended use" in public


def test_it_leaves_a_card_without_examples_as_it_is(tmp_path: Path) -> None:
    card = card_for(build_metrics(base=scores(30.0), expert=scores(20.0), teacher=scores(10.0)), tmp_path)
    assert PublicView(samples=False).card(card) == card


def test_it_keeps_every_score_of_the_metrics_and_no_example() -> None:
    metrics = qa_metrics()
    public = PublicView(samples=False).metrics(metrics)
    assert public["qa"]["examples"] == []
    assert public["qa"]["examples_withheld"] is True
    assert public["qa"]["rouge_l"] == metrics["qa"]["rouge_l"]
    assert public["heldout"] == metrics["heldout"]
    assert len(metrics["qa"]["examples"]) == 12  # the stored metrics are not changed
    assert PublicView(samples=False).metrics({"gap_closed": 0.5, "qa": None}) == {"gap_closed": 0.5, "qa": None}
    assert PublicView(samples=True).metrics(metrics) == metrics


def test_it_withholds_an_endpoint_teachers_url_everywhere_it_is_named(tmp_path: Path) -> None:
    url = "https://llm.internal.acme.example/v1"
    teacher = EndpointTeacherConfig(base_url=url, model="acme-70b", api_key="sk-0123456789abcdef")
    config = DistillConfig(tmp_path / "run", tmp_path / "cache", recipe="qa", teacher=teacher).to_json()
    judge = {"judge": f"acme-70b @ {url}", "mean_grade": {"base": 1.0, "expert": 4.0}}
    metrics = qa_metrics(judge)
    card = render_card(
        config=DistillConfig(tmp_path / "run", tmp_path / "cache", recipe="qa", teacher=teacher),
        config_json=config,
        base_identity={"spec": "tiny:llama-2l", "content_hash": "ab" * 32},
        teacher_label=teacher.label,
        metrics=metrics,
        data_stats={"train_chunks": 12},
        signature=None,
        adapter_config={"r": 4},
    )
    assert url in card  # the exporter names it, for the owner

    view = PublicView(samples=True, urls=endpoint_urls(config))

    assert url not in view.card(card)
    assert f"acme-70b @ {WITHHELD_URL}" in view.card(card)
    assert "QUESTION-11?" in view.card(card)  # shared samples stay
    assert view.metrics(metrics)["qa"]["judge"]["judge"] == f"acme-70b @ {WITHHELD_URL}"
    public_config = view.config(config)
    assert public_config["teacher"]["base_url"] == WITHHELD_URL
    assert public_config["teacher"]["model"] == "acme-70b"
    assert "output_dir" not in public_config
    assert endpoint_urls({"teacher": {"type": "local", "spec": "packaged:smollm2-135m-instruct"}}) == ()
