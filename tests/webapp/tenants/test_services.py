from __future__ import annotations

import pytest

from tests.webapp.conftest import Cast, make_user
from webapp.tenants import services
from webapp.tenants.models import Membership
from webapp.tenants.permissions import Role

pytestmark = pytest.mark.django_db


def m(cast: Cast, username: str) -> Membership:
    return Membership.objects.get(organization=cast.org, user__username=username)


def test_it_adds_a_user_by_email_case_insensitively(cast: Cast) -> None:
    make_user("newbie")
    added = services.add_member(actor=m(cast, "olivia"), identifier="NEWBIE@example.com", role=Role.MEMBER)
    assert added.user.username == "newbie"


def test_it_refuses_adding_someone_twice(cast: Cast) -> None:
    with pytest.raises(services.MembershipError, match="already a member"):
        services.add_member(actor=m(cast, "olivia"), identifier="mia", role=Role.MEMBER)


def test_it_never_leaves_an_org_without_an_owner(cast: Cast) -> None:
    owner = m(cast, "olivia")
    with pytest.raises(services.MembershipError, match="at least one owner"):
        services.change_role(actor=owner, target=owner, role=Role.ADMIN)
    with pytest.raises(services.MembershipError, match="at least one owner"):
        services.remove_member(actor=owner, target=owner)
    assert m(cast, "olivia").role == Role.OWNER


def test_it_lets_an_owner_step_down_once_another_owner_exists(cast: Cast) -> None:
    owner = m(cast, "olivia")
    services.change_role(actor=owner, target=m(cast, "adam"), role=Role.OWNER)
    services.change_role(actor=owner, target=owner, role=Role.MEMBER)
    assert m(cast, "olivia").role == Role.MEMBER


@pytest.mark.parametrize("new_role", [Role.OWNER])
def test_it_stops_admins_from_granting_owner(cast: Cast, new_role: Role) -> None:
    with pytest.raises(services.MembershipError, match="Only an owner"):
        services.change_role(actor=m(cast, "adam"), target=m(cast, "mia"), role=new_role)


def test_it_stops_admins_from_demoting_owners(cast: Cast) -> None:
    with pytest.raises(services.MembershipError, match="Only an owner"):
        services.change_role(actor=m(cast, "adam"), target=m(cast, "olivia"), role=Role.MEMBER)


def test_it_lets_admins_promote_members_to_admin(cast: Cast) -> None:
    services.change_role(actor=m(cast, "adam"), target=m(cast, "mia"), role=Role.ADMIN)
    assert m(cast, "mia").role == Role.ADMIN
