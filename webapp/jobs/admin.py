from django.contrib import admin

from webapp.jobs.models import DistillationJob, Notification, Teacher


@admin.register(Teacher)
class TeacherAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "kind", "spec", "model_name", "base_url", "api_key_last4", "updated_at"]
    list_filter = ["kind", "organization"]
    search_fields = ["name", "spec", "model_name"]
    # The encrypted key is useless to read and must not be edited by hand (the teachers page sets it).
    exclude = ["api_key_encrypted"]
    readonly_fields = ["api_key_last4", "created_at", "updated_at"]


@admin.register(DistillationJob)
class DistillationJobAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "status", "recipe", "step", "total_steps", "attempt", "created_at"]
    list_filter = ["status", "recipe", "organization"]
    search_fields = ["name"]
    # The row is the worker's record: staff read it here; changes go through the pages (cancel, retry).
    readonly_fields = [
        field.name for field in DistillationJob._meta.get_fields() if field.concrete and not field.many_to_many
    ]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "organization", "recipient", "message", "read_at"]
    list_filter = ["organization"]
