"""Distillery's web app: the Django project and its apps, one per domain.

Importing the package loads the Celery app so that `shared_task` and `transaction.on_commit(task.delay)`
use Distillery's configuration in every process (web, workers, beat).
"""

from webapp.celery import app as celery_app

__all__ = ("celery_app",)
