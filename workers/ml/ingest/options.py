"""Options of one extraction (re-exported by `extract`, where callers find them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.ml.ingest.limits import IngestLimits


@dataclass(frozen=True)
class ExtractOptions:
    csv_text_column: str | None = field(
        default=None,
        metadata={"help": "CSV column holding the text; None uses the proposed one (longest values, or text/body)."},
    )
    limits: IngestLimits = field(default_factory=IngestLimits, metadata={"help": "Size and archive limits."})
