from django.urls import path

from webapp.tenants import views

app_name = "tenants"
urlpatterns = [
    path("new/", views.create_organization, name="create"),
    path("switch/", views.switch_organization, name="switch"),
    path("", views.organization_settings, name="settings"),
    path("delete/", views.delete_organization, name="delete"),
    path("members/", views.members, name="members"),
    path("members/<int:membership_id>/role/", views.change_member_role, name="member-role"),
    path("members/<int:membership_id>/remove/", views.remove_member, name="member-remove"),
    path("tokens/", views.api_tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.revoke_api_token, name="token-revoke"),
    path("audit/", views.audit_log, name="audit"),
]
