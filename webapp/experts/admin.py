from django.contrib import admin

from webapp.experts.models import Expert, ExpertVersion, Mixture, MixtureSharedExpert, UsageCounter


class ExpertVersionInline(admin.TabularInline):
    model = ExpertVersion
    extra = 0
    can_delete = False
    fields = ["number", "recipe", "base_spec", "artifact_location", "size_bytes", "created_at"]
    readonly_fields = fields


@admin.register(Expert)
class ExpertAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "slug", "status", "shared", "share_samples", "created_at"]
    list_filter = ["status", "shared", "organization"]
    search_fields = ["name", "slug"]
    readonly_fields = ["active_version", "shared_at", "created_at", "updated_at"]
    inlines = [ExpertVersionInline]


@admin.register(ExpertVersion)
class ExpertVersionAdmin(admin.ModelAdmin):
    list_display = ["expert", "number", "organization", "recipe", "base_spec", "size_bytes", "created_at"]
    list_filter = ["recipe", "organization"]
    # A version is what a job made: staff read it here; the files it points at are never edited by hand.
    readonly_fields = [
        field.name for field in ExpertVersion._meta.get_fields() if field.concrete and not field.many_to_many
    ]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False


class MixtureSharedExpertInline(admin.TabularInline):
    model = MixtureSharedExpert
    extra = 0


@admin.register(Mixture)
class MixtureAdmin(admin.ModelAdmin):
    list_display = ["organization", "top_k", "temperature", "threshold", "fallback_to_base", "updated_at"]
    inlines = [MixtureSharedExpertInline]


@admin.register(UsageCounter)
class UsageCounterAdmin(admin.ModelAdmin):
    list_display = ["organization", "day", "bucket", "requests", "prompt_tokens", "completion_tokens"]
    list_filter = ["day", "organization"]
