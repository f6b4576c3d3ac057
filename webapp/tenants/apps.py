from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "webapp.tenants"
    label = "tenants"
    verbose_name = "Organizations"

    def ready(self) -> None:
        # Login and logout signals feed the audit log.
        from webapp.tenants import signals  # noqa: F401
