"""The permission table in code and the one in docs/architecture.md are the same table."""

from __future__ import annotations

import re
from pathlib import Path

from webapp.tenants.permissions import PERMISSIONS, Perm, Role, role_allows

DOC = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"


def documented_table() -> dict[str, set[str]]:
    rows: dict[str, set[str]] = {}
    section = DOC.read_text().split("## Tenants and permissions", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        match = re.match(r"\|\s*`([a-z_.]+)`\s*\|(.*)\|\s*$", line)
        if match:
            cells = [cell.strip() for cell in match.group(2).split("|")]
            rows[match.group(1)] = {
                role for role, cell in zip(("owner", "admin", "member"), cells, strict=False) if cell == "✓"
            }
    return rows


def test_it_documents_exactly_the_permissions_in_code() -> None:
    in_code = {perm.value: {role.value for role in roles} for perm, roles in PERMISSIONS.items()}
    assert documented_table() == in_code


def test_it_gives_owners_every_permission() -> None:
    assert all(role_allows(Role.OWNER, perm) for perm in Perm)


def test_it_keeps_members_out_of_admin_work() -> None:
    for perm in (Perm.MANAGE_MEMBERS, Perm.MANAGE_TEACHERS, Perm.MANAGE_TOKENS, Perm.PUBLISH_EXPERTS):
        assert not role_allows(Role.MEMBER, perm)
    assert role_allows(Role.MEMBER, Perm.VIEW_TEACHERS)
    assert not role_allows(None, Perm.VIEW_ORG)
