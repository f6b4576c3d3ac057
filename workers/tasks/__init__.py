"""Celery tasks: the only Django-aware code under workers/.

A task receives IDs, claims its database row with a conditional update, calls the pure ML code in
workers/ml or workers/moe with dataclass configs and callbacks, and writes progress and outcome back.
"""


# The Celery app lists the task modules (webapp/celery.py, TASK_MODULES); importing this package loads none of
# them, so the web process can read a constant from one without pulling in the others.
