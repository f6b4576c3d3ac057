"""A teacher from the model catalog, run in this process: full logits for recipe kd, chat for recipe qa."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from workers.ml.catalog_types import LoadedModel
from workers.ml.distill.errors import OutOfMemory, TeacherError
from workers.ml.distill.teachers.base import (
    ChatCancelled,
    ChatProgress,
    Conversation,
    Teacher,
    TokenUsage,
    default_generation_batch,
)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens: 0, 1, 2 … from each row's first unpadded token.

    With left padding this gives every row the positions it would have unpadded; with right padding (or
    none) it equals arange(T) over the real tokens.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class LocalTeacher(Teacher):
    """Wraps a catalog `LoadedModel`: eval mode, no gradients, on the model's device.

    Not thread-safe: one caller at a time (the GPU worker runs one job at a time anyway).
    """

    def __init__(self, loaded: LoadedModel, *, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._loaded: LoadedModel | None = loaded
        self.batch_size = batch_size or default_generation_batch(loaded.device.type)
        self.label = loaded.spec
        self.usage = TokenUsage()
        loaded.model.eval()

    # ------------------------------------------------------------ accessors

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise TeacherError(f"The teacher {self.label} was closed.")
        return self._loaded

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    # ------------------------------------------------------------ logits (recipe kd)

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The teacher's next-token logits, (B, T, V) float32 on the teacher's device; row t predicts token t+1.

        Runs under torch.no_grad (not inference_mode, so the result can be a target in a loss that is
        backpropagated through the student). Without `position_ids`, positions are derived from
        `attention_mask` so that left-padded rows get the logits they would have unpadded; pass explicit
        `position_ids` for packed rows. V is the model's output size, which may exceed len(tokenizer).
        """
        device = self.device
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids.to(device)}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(device)
            if position_ids is None:
                position_ids = positions_from_mask(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(device)
        with torch.no_grad():
            output = self.model(**kwargs, use_cache=False)
        logits: torch.Tensor = output.logits  # (B, T, V)
        return logits.float()

    # ------------------------------------------------------------ chat (recipe qa)

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] | None = None,
        on_progress: ChatProgress | None = None,
    ) -> list[str]:
        """Generate a reply per conversation through the tokenizer's chat template, in batches of `batch_size`.

        Batches are left-padded (conversations sorted by length first, so little padding), greedy when
        temperature is 0, sampled otherwise (seed torch for reproducibility). The prompt is stripped and
        special tokens are skipped when decoding. A batch that runs out of GPU memory is split in halves.
        `should_stop` is asked after every generated token (ChatCancelled); `on_progress` hears the share done,
        counting each batch's tokens against max_new_tokens.
        """
        if not conversations:
            return []
        tokenizer = self.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise TeacherError(
                f"The teacher {self.label} has no chat template (it is a base model, not an instruct model); "
                "pick an instruct model as the teacher."
            )
        prompts: list[list[int]] = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
            # The template already holds the special tokens (bos, role markers): add none of our own.
            prompts.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        context = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(prompt) for prompt in prompts)
        if isinstance(context, int) and longest + max_new_tokens > context:
            raise TeacherError(
                f"A prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the context of the teacher "
                f"{self.label} ({context} tokens); use shorter chunks or fewer new tokens."
            )
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]), reverse=True)
        results: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            watch = _Watch(should_stop, on_progress, start, len(batch), len(order), max_new_tokens)
            watch.check()  # before a batch's prefill, which alone can take seconds
            texts = self._generate_splitting([prompts[index] for index in batch], max_new_tokens, temperature, watch)
            watch.check()  # the stop may have come in the batch's last step
            for index, text in zip(batch, texts, strict=True):
                results[index] = text
        if on_progress is not None:
            on_progress(1.0)
        return results

    def _generate_splitting(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, watch: _Watch
    ) -> list[str]:
        try:
            return self._generate(prompts, max_new_tokens, temperature, watch)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(prompts) == 1:
                raise OutOfMemory(
                    f"The teacher {self.label} ran out of memory generating one answer of {len(prompts[0])} prompt "
                    f"tokens; lower qa.max_new_tokens or the chunk length, or use a smaller teacher."
                ) from None
        half = len(prompts) // 2
        return self._generate_splitting(prompts[:half], max_new_tokens, temperature, watch) + self._generate_splitting(
            prompts[half:], max_new_tokens, temperature, watch
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(item) for item in value)
        return ids

    def _generation_config(self, max_new_tokens: int, temperature: float, pad_id: int) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        if temperature > 0:
            config.update(do_sample=True, temperature=temperature)
        else:
            # Unset the model's sampling defaults so greedy decoding raises no "ignored flag" warnings.
            config.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None)
        config.update(max_new_tokens=max_new_tokens, pad_token_id=pad_id, num_beams=1, num_return_sequences=1)
        return config

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, watch: _Watch) -> list[str]:
        tokenizer, device = self.tokenizer, self.device
        eos_ids = self._eos_ids()
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = min(eos_ids) if eos_ids else 0
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: the prompts end where generation starts
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        config = self._generation_config(max_new_tokens, temperature, pad_id)
        watch.prompt_width = width
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([watch]),
            )
        new_tokens = output[:, width:].cpu()
        completion_tokens = 0
        for row in new_tokens.tolist():
            ends = [position for position, token in enumerate(row) if token in eos_ids]
            completion_tokens += ends[0] + 1 if ends else len(row)
        self.usage.add(sum(len(prompt) for prompt in prompts), completion_tokens, requests=len(prompts))
        texts: list[str] = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return texts

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded.device.type == "cuda":
            del loaded
            torch.cuda.empty_cache()


class _Watch(StoppingCriteria):
    """Asked by `generate` after every token: stops the whole batch when `should_stop` says so, reports progress.

    The batch is rows [first, first + size) of a call of `total` conversations; its share of the call is
    counted in generated tokens against `max_new_tokens` (an upper bound: a batch may end sooner).
    """

    def __init__(
        self,
        should_stop: Callable[[], bool] | None,
        on_progress: ChatProgress | None,
        first: int,
        size: int,
        total: int,
        max_new_tokens: int,
    ) -> None:
        self.should_stop, self.on_progress = should_stop, on_progress
        self.first, self.size, self.total, self.max_new_tokens = first, size, total, max(1, max_new_tokens)
        self.prompt_width = 0  # set by _generate before each generate call (an OOM split changes it)
        self.stopped = False

    def _asked_to_stop(self) -> bool:
        """Sticky: once `should_stop` said yes, every later batch (an OOM split's second half too) stops at once."""
        self.stopped = self.stopped or (self.should_stop is not None and self.should_stop())
        return self.stopped

    def check(self) -> None:
        if self._asked_to_stop():
            raise ChatCancelled("stopped while the teacher was generating")

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        # input_ids: (batch, prompt width + tokens generated so far)
        if self.on_progress is not None:
            generated = min(self.max_new_tokens, input_ids.shape[1] - self.prompt_width)
            self.on_progress((self.first + self.size * generated / self.max_new_tokens) / self.total)
        stop = self._asked_to_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
