"""Template hygiene that Django does not check: a `{# … #}` comment must end on its own line, or Django shows it
to the user as text (multi-line comments need `{% comment %}`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TEMPLATES = sorted((Path(__file__).resolve().parents[2] / "templates").rglob("*.html"))
UNCLOSED_COMMENT = re.compile(r"\{#(?!.*?#\})")


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: str(path.relative_to(path.parents[1])))
def test_it_closes_every_one_line_comment_on_its_line(template: Path) -> None:
    unclosed = [
        number for number, line in enumerate(template.read_text().splitlines(), 1) if UNCLOSED_COMMENT.search(line)
    ]
    assert unclosed == [], f"{template.name}: a {{# comment spans lines {unclosed}; use {{% comment %}}"
