"""The in-process serving stack (tests/webapp/api/live_stack.py) for the API tests."""

from tests.webapp.api.live_stack import (  # noqa: F401 - fixtures
    engine_service,
    engine_url,
    expert_dirs,
    live_engine,
    model_cache_dir,
    web_url,
)
