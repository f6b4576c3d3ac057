"""What another org sees of a shared expert: its quality, without the owner's text or infrastructure.

- **Samples.** The expert card (README.md) and metrics.json quote the owner's text: the evaluation's five best and
  five worst answers carry held-out questions, the teacher's reference answers (written from the owner's
  documents) and, with a user-supplied evaluation set, the owner's own yardstick. Unless the owner shares the
  samples, these views leave them out and keep every number.
- **Infrastructure.** An endpoint teacher is named `model @ base_url` in the card and in the judge's label, and
  config.json holds that URL and the server's paths (where the job ran, the model cache). Another org always gets
  the URL withheld and no paths.

The card is Markdown written by `workers.ml.distill.export._qa_card_lines`: a title line ("Best answers:" or
"Worst answers:"), a blank line, then a table whose lines start with "|". A test renders a real card through the
exporter and checks that no example text survives here, so a change of that layout fails there first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

SAMPLE_TITLES = frozenset({"Best answers:", "Worst answers:"})
WITHHELD_NOTE = "Best and worst answers: not shared (they quote the owner's documents)."
WITHHELD_URL = "(endpoint URL not shared)"
# DistillConfig.to_json()'s fields that are paths on the server that ran the job.
SERVER_PATHS = ("output_dir", "model_cache_dir", "checkpoint_dir", "work_dir", "model_roots")


def endpoint_urls(config: Any) -> tuple[str, ...]:
    """The endpoint teacher's base URL that config.json names, if the teacher was an endpoint."""
    teacher = config.get("teacher") if isinstance(config, dict) else None
    url = teacher.get("base_url") if isinstance(teacher, dict) else None
    return (url,) if isinstance(url, str) and url else ()


def _withhold(value: Any, urls: tuple[str, ...]) -> Any:
    """The value with each URL replaced, in every string it holds."""
    if isinstance(value, str):
        for url in urls:
            value = value.replace(url, WITHHELD_URL)
        return value
    if isinstance(value, dict):
        return {key: _withhold(item, urls) for key, item in value.items()}
    if isinstance(value, list):
        return [_withhold(item, urls) for item in value]
    return value


def without_examples(card: str) -> str:
    """The card without its tables of example answers, with one line saying they were withheld."""
    lines = card.split("\n")
    kept: list[str] = []
    noted = False
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.strip() not in SAMPLE_TITLES:
            kept.append(line)
            continue
        # The title's block: blank lines and the table's lines, up to whatever comes next.
        while index < len(lines) and (not lines[index].strip() or lines[index].lstrip().startswith("|")):
            index += 1
        if not noted:
            kept += [WITHHELD_NOTE, ""]
            noted = True
    return "\n".join(kept)


@dataclass(frozen=True)
class PublicView:
    """How one expert version reads to another org: `samples` when its owner shares them, `urls` to withhold."""

    samples: bool
    urls: tuple[str, ...] = ()

    def card(self, card: str) -> str:
        return _withhold(card if self.samples else without_examples(card), self.urls)

    def metrics(self, metrics: Any) -> dict[str, Any]:
        """metrics.json with every score and count; the example answers only with the samples."""
        public = copy.deepcopy(metrics) if isinstance(metrics, dict) else {}
        qa = public.get("qa")
        if not self.samples and isinstance(qa, dict) and qa.get("examples"):
            qa["examples"] = []
            qa["examples_withheld"] = True
        return _withhold(public, self.urls)

    def config(self, config: Any) -> dict[str, Any]:
        """config.json without server paths; an evaluation set keeps its file name only."""
        public = {key: value for key, value in (config if isinstance(config, dict) else {}).items()}
        for key in SERVER_PATHS:
            public.pop(key, None)
        evaluation = public.get("evaluation")
        if isinstance(evaluation, dict) and evaluation.get("eval_set"):
            public["evaluation"] = {**evaluation, "eval_set": PurePath(str(evaluation["eval_set"])).name}
        return _withhold(public, self.urls)
