"""Registering a finished job's expert from a real tiny LoRA, versions and rollback, the download zip, sharing.

The tiny base (tiny:llama-2l) loads in about a second on CPU, so these run in the default tier.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import CONFIG, TINY_SPEC, TinyAdapter, make_expert, succeeded_job
from webapp.experts import services
from webapp.experts.models import Expert, ExpertVersion
from webapp.jobs.models import DistillationJob
from webapp.tenants.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_it_registers_a_new_expert_then_a_second_version_and_rolls_back(
    cast: Cast, tiny_adapter: TinyAdapter, tmp_path: Path
) -> None:
    job = succeeded_job(cast.org, tiny_adapter, tmp_path, name="Leave policy", created_by=cast.owner)
    first = services.register_from_job(job)
    expert = first.expert
    assert (expert.name, expert.slug, first.number) == ("Leave policy", "leave-policy", 1)
    assert first.base_spec == TINY_SPEC
    assert first.base_hash == tiny_adapter.content_hash
    assert first.signature["counts"] == [7, 5]
    assert first.metrics["gap_closed"] == 0.5
    assert Path(first.artifact_location, "adapter_model.safetensors").is_file()
    assert first.size_bytes > 0
    assert DistillationJob.objects.get(pk=job.pk).expert_id == expert.pk
    # Idempotent: the same job registers once.
    assert services.register_from_job(job).pk == first.pk
    assert ExpertVersion.objects.filter(expert=expert).count() == 1
    # A re-distillation of the expert: version 2, made active.
    again = succeeded_job(cast.org, tiny_adapter, tmp_path, name="Leave policy (retrain)", expert=expert)
    second = services.register_from_job(again)
    expert.refresh_from_db()
    assert (second.expert_id, second.number, expert.active_version_id) == (expert.pk, 2, second.pk)
    assert Expert.objects.for_org(cast.org).count() == 1
    assert second.artifact_location != first.artifact_location
    # Rollback through the page: v1 serves again, v2 is kept.
    response = cast.client_for("member").post(reverse("experts:rollback", args=[expert.pk, 1]))
    assert response.status_code == 302
    expert.refresh_from_db()
    assert expert.active_version_id == first.pk
    assert services.route_candidates(cast.org) == [first.engine_ref()]
    assert AuditEvent.objects.filter(action=AuditEvent.Action.EXPERT_REGISTERED).count() == 2


def test_it_refuses_to_register_an_output_without_an_adapter(cast: Cast, tmp_path: Path) -> None:
    from tests.webapp.jobs.conftest import make_corpus, make_job

    empty = tmp_path / "empty"
    empty.mkdir()
    job = make_job(make_corpus(cast.org), "succeeded", artifact_dir=str(empty))
    with pytest.raises(services.ExpertError):
        services.register_from_job(job)
    assert not Expert.objects.exists()


def _zip(response: object) -> zipfile.ZipFile:
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    return zipfile.ZipFile(io.BytesIO(body))


def test_it_downloads_a_zip_that_peft_loads_with_the_same_logits(
    cast: Cast, tiny_adapter: TinyAdapter, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    from tests.workers.conftest import REPO_ROOT
    from workers.ml.catalog import CatalogConfig, load_model

    job = succeeded_job(cast.org, tiny_adapter, tmp_path, name="Leave policy")
    version = services.register_from_job(job)
    response = cast.client_for("member").get(reverse("experts:download", args=[version.expert_id]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="leave-policy-v1.zip"'
    archive = _zip(response)
    names = sorted(Path(name).name for name in archive.namelist())
    assert names == sorted(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "README.md",
            "base.json",
            "metrics.json",
            "config.json",
            "signature.json",
            "qa_data.jsonl",
        ]
    )
    archive.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / "leave-policy-v1"
    base = load_model(TINY_SPEC, CatalogConfig(cache_dir=REPO_ROOT / "var" / "test-model-cache", device="cpu"))
    model = PeftModel.from_pretrained(base.model, folder)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=tiny_adapter.input_ids).logits
    torch.testing.assert_close(logits, tiny_adapter.logits)
    # The adapter matters: without it the logits differ.
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=tiny_adapter.input_ids).logits
    assert not torch.allclose(plain, tiny_adapter.logits)


def test_it_leaves_the_samples_out_of_another_orgs_zip_unless_shared(cast: Cast) -> None:
    expert = make_expert(cast.org, versions=1)
    services.publish(expert, user=cast.owner)
    url = reverse("experts:download", args=[expert.pk])
    names = {Path(name).name for name in _zip(cast.client_for("outsider").get(url)).namelist()}
    assert "adapter_model.safetensors" in names
    assert "README.md" in names
    assert not names & {"qa_data.jsonl", "training_log.jsonl"}
    owner_names = {Path(name).name for name in _zip(cast.client_for("member").get(url)).namelist()}
    assert {"qa_data.jsonl", "training_log.jsonl"} <= owner_names
    services.publish(expert, user=cast.owner, share_samples=True)
    names = {Path(name).name for name in _zip(cast.client_for("outsider").get(url)).namelist()}
    assert {"qa_data.jsonl", "training_log.jsonl"} <= names


def test_it_answers_404_for_a_missing_or_malformed_version(cast: Cast) -> None:
    expert = make_expert(cast.org, versions=1)
    client = cast.client_for("member")
    base = reverse("experts:download", args=[expert.pk])
    assert client.get(base + "?version=7").status_code == 404
    assert client.get(base + "?version=x").status_code == 404
    empty = Expert.objects.create(organization=cast.org, name="Empty", slug="empty")
    assert client.get(reverse("experts:download", args=[empty.pk])).status_code == 404


def test_it_shares_an_expert_into_another_orgs_mixture_and_withdraws_it(cast: Cast) -> None:
    expert = make_expert(cast.org, "Pricing")
    other = cast.client_for("outsider")
    assert "Pricing" not in other.get(reverse("experts:catalog")).content.decode()
    cast.client_for("owner").post(reverse("experts:publish", args=[expert.pk]))
    assert "Pricing" in other.get(reverse("experts:catalog")).content.decode()
    other.post(reverse("experts:include", args=[expert.pk]))
    expert.refresh_from_db()
    assert expert in services.member_experts(cast.other_org)
    resolved = services.resolve_model(cast.other_org, "acme/pricing")
    assert resolved is not None
    assert resolved.expert == expert
    assert resolved.version == expert.active_version
    assert services.resolve_model(cast.other_org, "pricing") is None  # the bare slug is org A's name only
    assert expert.active_version.engine_ref() in services.route_candidates(cast.other_org)
    # Disabled by its owner: out of every mixture (and the catalog) while disabled.
    services.set_status(expert, Expert.Status.DISABLED, user=cast.owner)
    assert expert not in services.member_experts(cast.other_org)
    assert expert not in services.member_experts(cast.org)
    assert services.resolve_model(cast.other_org, "acme/pricing") is None
    services.set_status(expert, Expert.Status.ACTIVE, user=cast.owner)
    assert expert in services.member_experts(cast.other_org)
    # Withdrawn: gone from the other org's mixture, and re-publishing does not bring it back there.
    cast.client_for("admin").post(reverse("experts:withdraw", args=[expert.pk]))
    assert expert not in services.member_experts(cast.other_org)
    assert services.route_candidates(cast.other_org) == []
    assert other.get(reverse("experts:detail", args=[expert.pk])).status_code == 404
    services.publish(expert, user=cast.owner)
    assert expert not in services.member_experts(cast.other_org)


def test_another_orgs_zip_has_no_example_answers_unless_shared_and_never_server_paths(cast: Cast) -> None:
    expert = make_expert(cast.org, versions=1)
    services.publish(expert, user=cast.owner)
    url = reverse("experts:download", args=[expert.pk])

    def card_and_metrics(who: str) -> tuple[str, dict[str, Any]]:
        archive = _zip(cast.client_for(who).get(url))
        return (
            archive.read("leave-policy-v1/README.md").decode(),
            json.loads(archive.read("leave-policy-v1/metrics.json")),
        )

    card, metrics = card_and_metrics("outsider")
    assert "SECRET-REFERENCE" not in card
    assert "Best and worst answers: not shared" in card
    assert "| expert | 0.400 |" in card
    assert metrics["qa"]["examples"] == []
    assert metrics["qa"]["rouge_l"] == {"base": 0.1, "expert": 0.4}
    assert metrics["heldout"]["expert"]["perplexity"] == 20.0

    assert "llm.internal.acme.example" not in card  # nor the owner's endpoint
    config = json.loads(_zip(cast.client_for("outsider").get(url)).read("leave-policy-v1/config.json"))
    assert "/srv/" not in json.dumps(config)  # no server paths, ever, for another org
    assert "llm.internal.acme.example" not in json.dumps(config)
    assert config["lora"] == CONFIG["lora"]
    assert config["evaluation"] == {"eval_set": "yardstick.jsonl", "max_eval_questions": 50}

    card, metrics = card_and_metrics("member")  # the owner org gets the files as they are
    assert "SECRET-REFERENCE" in card
    assert "acme-70b @ https://llm.internal.acme.example/v1" in card
    assert len(metrics["qa"]["examples"]) == 8
    assert json.loads(_zip(cast.client_for("member").get(url)).read("leave-policy-v1/config.json")) == CONFIG
    services.publish(expert, user=cast.owner, share_samples=True)
    card, metrics = card_and_metrics("outsider")
    assert "SECRET-REFERENCE" in card
    assert len(metrics["qa"]["examples"]) == 8
    assert "llm.internal.acme.example" not in card
    config = json.loads(_zip(cast.client_for("outsider").get(url)).read("leave-policy-v1/config.json"))
    assert "output_dir" not in config  # sharing the samples does not share the server's paths or the endpoint
    assert config["teacher"]["base_url"] == "(endpoint URL not shared)"
