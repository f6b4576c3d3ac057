from django.contrib import admin
from django.urls import include, path

from webapp.api.reference import api_reference

urlpatterns = [
    path("", include("webapp.core.urls")),
    path("accounts/", include("webapp.accounts.urls")),
    path("org/webhooks/", include("webapp.webhooks.urls")),
    path("org/", include("webapp.tenants.urls")),
    path("corpora/", include("webapp.corpora.urls")),
    path("jobs/", include("webapp.jobs.urls")),
    path("experts/", include("webapp.experts.urls")),
    path("api/", api_reference, name="api-reference"),
    path("api/v1/", include("webapp.api.urls")),
    path("v1/", include("webapp.api.openai_urls")),
    path("admin/", admin.site.urls),
]

# Django's default pages, plus giving back the database connection an error page used (see webapp/core/errors.py).
handler400 = "webapp.core.errors.bad_request"
handler403 = "webapp.core.errors.permission_denied"
handler404 = "webapp.core.errors.page_not_found"
handler500 = "webapp.core.errors.server_error"
