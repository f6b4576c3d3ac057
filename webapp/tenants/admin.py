from django.contrib import admin

from webapp.tenants.models import ApiToken, AuditEvent, Membership, Organization


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at", "storage_quota_bytes"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "display_prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["organization"]
    # The hash is useless to read and must never be edited by hand.
    exclude = ["token_hash"]
    readonly_fields = ["display_prefix", "created_at", "last_used_at"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "organization", "actor_name", "action", "target", "ip_address"]
    list_filter = ["action", "organization"]
    search_fields = ["actor_name", "target"]

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # an audit log is append-only
