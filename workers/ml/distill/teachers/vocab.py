"""Whether two tokenizers share a vocabulary, which token-level logit distillation (recipe kd) needs.

A local teacher of another vocabulary goes through cross_tokenizer.py (TRL's ULD loss) instead.
"""

from __future__ import annotations

from typing import Any

from workers.ml.distill.errors import TokenizerMismatch


def same_vocabulary(tokenizer_a: Any, tokenizer_b: Any) -> bool:
    """True when both tokenizers map every token to the same id and agree on the end-of-sequence token.

    Cheap checks first (length, eos); the full token -> id maps are compared only when those agree.
    """
    if tokenizer_a is tokenizer_b:
        return True
    if len(tokenizer_a) != len(tokenizer_b):
        return False
    if (tokenizer_a.eos_token, tokenizer_a.eos_token_id) != (tokenizer_b.eos_token, tokenizer_b.eos_token_id):
        return False
    return bool(tokenizer_a.get_vocab() == tokenizer_b.get_vocab())


def _name(tokenizer: Any, given: str | None) -> str:
    return given or str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def vocabulary_sizes(
    teacher_tokenizer: Any, student_tokenizer: Any, *, teacher_name: str | None = None, student_name: str | None = None
) -> str:
    """How two vocabularies differ, for error messages: their sizes, or that equal sizes map tokens differently."""
    teacher, student = _name(teacher_tokenizer, teacher_name), _name(student_tokenizer, student_name)
    n_teacher, n_student = len(teacher_tokenizer), len(student_tokenizer)
    if n_teacher == n_student:
        return f"teacher {teacher} and student {student} both have {n_teacher} tokens, but with different ids"
    return f"teacher {teacher} has {n_teacher} tokens, student {student} has {n_student}"


def require_same_vocabulary(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    recipe_hint: str = "qa",
    teacher_name: str | None = None,
    student_name: str | None = None,
    detail: str = "",
) -> None:
    """Raise TokenizerMismatch, with a message that names the recipe to use instead, unless vocabularies match.

    `teacher_name` / `student_name` (e.g. catalog specs) read better in the message than tokenizer paths;
    `detail` is a sentence put before the suggestion (e.g. why another way does not apply).
    """
    if same_vocabulary(teacher_tokenizer, student_tokenizer):
        return
    sizes = vocabulary_sizes(teacher_tokenizer, student_tokenizer, teacher_name=teacher_name, student_name=student_name)
    raise TokenizerMismatch(
        f"Recipe kd needs the teacher to share the student's vocabulary ({sizes}). "
        + (f"{detail} " if detail else "")
        + f"Use recipe '{recipe_hint}', which distils through generated text and works with any teacher."
    )
