"""Teachers of the distillation engine: a catalog model in this process, or an OpenAI-compatible endpoint.

    teacher = load_teacher(config.teacher, CatalogConfig(cache_dir=config.model_cache_dir))
    answers = teacher.chat([[{"role": "user", "content": "…"}]], max_new_tokens=256)   # recipe qa
    logits = teacher.logits(input_ids, attention_mask)                                # recipe kd, local only
    values, ids = teacher.prompt_topk_logprobs([ids], top_k=20)[0]                   # recipe kd, vLLM endpoint
    teacher.close()

Only `workers.ml.distill.teachers.endpoint` needs the `openai` client, and imports it lazily.
"""

from __future__ import annotations

from workers.ml.catalog import load_model
from workers.ml.catalog_types import CatalogConfig, CatalogError, ProgressCallback, print_progress
from workers.ml.distill.config import EndpointTeacherConfig, LocalTeacherConfig
from workers.ml.distill.errors import TeacherError
from workers.ml.distill.teachers.base import (
    ChatCancelled,
    ChatProgress,
    Conversation,
    Teacher,
    TeacherBudgetExhausted,
    TokenUsage,
    default_generation_batch,
)
from workers.ml.distill.teachers.endpoint import EndpointTeacher
from workers.ml.distill.teachers.local import LocalTeacher, positions_from_mask
from workers.ml.distill.teachers.vocab import require_same_vocabulary, same_vocabulary

__all__ = [
    "ChatCancelled",
    "ChatProgress",
    "Conversation",
    "EndpointTeacher",
    "LocalTeacher",
    "Teacher",
    "TeacherBudgetExhausted",
    "TokenUsage",
    "default_generation_batch",
    "load_teacher",
    "positions_from_mask",
    "require_same_vocabulary",
    "same_vocabulary",
]


def load_teacher(
    config: LocalTeacherConfig | EndpointTeacherConfig,
    catalog: CatalogConfig,
    *,
    batch_size: int | None = None,
    progress: ProgressCallback = print_progress,
) -> Teacher:
    """The teacher `config` describes: a LocalTeacher loaded through the catalog, or an EndpointTeacher.

    `batch_size`: conversations per chat call (None: the teacher's default for its device or concurrency).
    A model that cannot be loaded raises TeacherError (with the catalog's one-sentence reason).
    """
    if isinstance(config, EndpointTeacherConfig):
        return EndpointTeacher(config, batch_size=batch_size)
    if not isinstance(config, LocalTeacherConfig):
        raise TypeError(f"Not a teacher config: {type(config).__name__}")
    try:
        loaded = load_model(config.spec, catalog, progress=progress)
    except CatalogError as exc:
        raise TeacherError(f"The teacher model could not be loaded: {exc}") from exc
    return LocalTeacher(loaded, batch_size=batch_size)
