"""Pure ML code of Distillery: model catalog, device selection, distillation and training loops.

Nothing under workers/ml imports Django, Celery or the web app (ruff enforces it): callers pass dataclass
configs, paths and callbacks, so these modules run the same in a Celery task, a script or a test.
"""
