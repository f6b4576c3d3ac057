"""Expert bookkeeping on the cpu queue: recomputing routing signatures when the platform embedder changes.

A version's signature must come from the embedder the router uses (MOE_EMBEDDER). After changing it, the
operator runs `manage.py recompute_signatures`, which sends one task per version: it embeds the training chunks
of the corpus version the job was pinned to (kept with their text, so they outlive later uploads) and replaces
the row's and the stored file's signature. The engine notices the new fingerprint and re-reads it.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from webapp.corpora.models import Chunk
from webapp.experts.models import ExpertVersion
from webapp.experts.services import store_signature

logger = logging.getLogger(__name__)
SIGNATURE_MAX_TEXTS = 2000


@shared_task(name="distillery.experts.recompute_signature", time_limit=1800, soft_time_limit=1700, acks_late=True)
def recompute_signature(version_id: int) -> dict[str, object]:
    from workers.ml.distill.signature import compute_signature
    from workers.ml.embedder import shared_embedder

    version = ExpertVersion.objects.select_related("job").filter(pk=version_id).first()
    if version is None:
        return {"version": version_id, "skipped": "deleted"}
    corpus_version_id = version.job.corpus_version_id if version.job else None
    if corpus_version_id is None:
        logger.warning("expert version %s: its job or corpus version is gone; signature kept", version_id)
        return {"version": version_id, "skipped": "no corpus version"}
    texts = list(
        Chunk.objects.filter(version_id=corpus_version_id, split="train")
        .order_by("pk")
        .values_list("text", flat=True)[: SIGNATURE_MAX_TEXTS * 4]
    )
    if not texts:
        return {"version": version_id, "skipped": "no training chunks"}
    centroids = len(version.signature.get("counts") or []) or 4
    signature = compute_signature(
        shared_embedder(settings.MOE_EMBEDDER), texts, k=centroids, max_texts=SIGNATURE_MAX_TEXTS
    )
    store_signature(version, signature.to_json())
    return {"version": version_id, "embedder": signature.embedder, "centroids": len(signature.counts)}
