"""Celery tasks: the only Django-aware code under workers/.

A task receives IDs, claims its database row with a conditional update, calls the pure ML code in
workers/ml or workers/moe with dataclass configs and callbacks, and writes progress and outcome back.
"""

from workers.tasks import system

__all__ = ["system"]
