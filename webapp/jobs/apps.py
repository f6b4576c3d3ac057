from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "webapp.jobs"
    label = "jobs"
    verbose_name = "Distillation jobs"

    def ready(self) -> None:
        # A corpus used by a queued or running job cannot be deleted (corpora asks its registered users).
        from webapp.corpora.models import CORPUS_USERS
        from webapp.jobs.models import active_jobs_of_corpus

        if active_jobs_of_corpus not in CORPUS_USERS:
            CORPUS_USERS.append(active_jobs_of_corpus)
