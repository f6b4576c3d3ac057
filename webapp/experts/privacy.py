"""What another org sees of an expert whose owner did not share its samples.

The expert card (README.md) and metrics.json quote the owner's text: the evaluation's five best and five worst
answers carry held-out questions, the teacher's reference answers (written from the owner's documents) and, with
a user-supplied evaluation set, the owner's own yardstick. These views leave those out and keep every number, so
a shared expert's card, page, download and API answer show its quality without its content. config.json goes
out without the server's paths (where the job ran, the model cache), which the card leaves out too.

The card is Markdown written by `workers.ml.distill.export._qa_card_lines`: a title line ("Best answers:" or
"Worst answers:"), a blank line, then a table whose lines start with "|". A test renders a real card through the
exporter and checks that no example text survives here, so a change of that layout fails there first.
"""

from __future__ import annotations

import copy
from pathlib import PurePath
from typing import Any

SAMPLE_TITLES = frozenset({"Best answers:", "Worst answers:"})
WITHHELD_NOTE = "Best and worst answers: not shared (they quote the owner's documents)."


def public_card(card: str) -> str:
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


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without the example answers (every score and count kept)."""
    public = copy.deepcopy(metrics) if isinstance(metrics, dict) else {}
    qa = public.get("qa")
    if isinstance(qa, dict) and qa.get("examples"):
        qa["examples"] = []
        qa["examples_withheld"] = True
    return public


# DistillConfig.to_json()'s fields that are paths on the server that ran the job.
SERVER_PATHS = ("output_dir", "model_cache_dir", "checkpoint_dir", "work_dir", "model_roots")


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json without server paths; an evaluation set keeps its file name only."""
    public = {key: value for key, value in (config if isinstance(config, dict) else {}).items()}
    for key in SERVER_PATHS:
        public.pop(key, None)
    evaluation = public.get("evaluation")
    if isinstance(evaluation, dict) and evaluation.get("eval_set"):
        public["evaluation"] = {**evaluation, "eval_set": PurePath(str(evaluation["eval_set"])).name}
    return public
