from django.urls import path

from webapp.api import corpora, experts, jobs, openapi, views, webhooks

app_name = "api"
urlpatterns = [
    path("openapi.json", openapi.openapi_json, name="openapi"),
    path("organization", views.organization, name="organization"),
    path("tokens", views.token_list, name="tokens"),
    path("tokens/<int:token_id>", views.token_detail, name="token"),
    path("corpora", corpora.corpus_list, name="corpora"),
    path("corpora/<int:corpus_id>", corpora.corpus_detail, name="corpus"),
    path("corpora/<int:corpus_id>/files", corpora.file_list, name="corpus-files"),
    path("corpora/<int:corpus_id>/files/<int:file_id>", corpora.file_detail, name="corpus-file"),
    path("corpora/<int:corpus_id>/files/<int:file_id>/content", corpora.file_content, name="corpus-file-content"),
    path("corpora/<int:corpus_id>/ingest", corpora.corpus_ingest, name="corpus-ingest"),
    path("corpora/<int:corpus_id>/versions", corpora.version_list, name="corpus-versions"),
    path("corpora/<int:corpus_id>/versions/<int:number>", corpora.version_detail, name="corpus-version"),
    path("jobs", jobs.job_list, name="jobs"),
    path("jobs/<int:job_id>", jobs.job_detail, name="job"),
    path("jobs/<int:job_id>/cancel", jobs.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/retry", jobs.job_retry, name="job-retry"),
    path("teachers", jobs.teacher_list, name="teachers"),
    path("experts", experts.expert_list, name="experts"),
    path("experts/<int:expert_id>", experts.expert_detail, name="expert"),
    path("experts/<int:expert_id>/download", experts.expert_download, name="expert-download"),
    path("webhooks", webhooks.endpoint_list, name="webhooks"),
    path("webhooks/<int:endpoint_id>", webhooks.endpoint_detail, name="webhook"),
    path("webhooks/<int:endpoint_id>/roll-secret", webhooks.endpoint_roll_secret, name="webhook-roll-secret"),
    path("webhooks/<int:endpoint_id>/test", webhooks.endpoint_test, name="webhook-test"),
    path("webhooks/<int:endpoint_id>/deliveries", webhooks.delivery_list, name="webhook-deliveries"),
    path(
        "webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver",
        webhooks.delivery_redeliver,
        name="webhook-redeliver",
    ),
]
