"""Settings for Flow Manager, read from the environment (12-factor).

Every knob is an environment variable; bad values stop the process at start with a message
that names the variable. See README.md, "Configuration".
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from flowmanager.env import env_bool, env_fernet_keys, env_float, env_int, env_list
from tasks import _netpolicy

BASE_DIR = Path(__file__).resolve().parent.parent

# A checkout's local settings: `make run` writes .env (DEBUG=1 and a generated SECRET_KEY,
# flowmanager/localenv.py) so that every manage.py command in that checkout, from any shell,
# shares the key of the web server and the worker. Variables already in the environment win,
# so the test suite's values and a deploy's stay as they are. ENV_FILE names another file;
# empty reads none (the test suite sets it so that a developer's .env cannot leak into tests).
ENV_FILE = os.environ.get("ENV_FILE", str(BASE_DIR / ".env")).strip()
if ENV_FILE:
    load_dotenv(ENV_FILE, override=False)

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY", "").strip()
    if not key:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY to a long random string (python3 -c "
            "'import secrets; print(secrets.token_urlsafe(50))'). For local development, "
            "`make run` writes one with DEBUG=1 to .env in the project folder "
            "(or run: python3 -m flowmanager.localenv)."
        )
    return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_q",
    "axes",
    "flows",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a refused login (too many failures) into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "flowmanager.urls"
WSGI_APPLICATION = "flowmanager.wsgi.application"
ASGI_APPLICATION = "flowmanager.asgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip() or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
except Exception as exc:  # dj-database-url raises several types for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL={DATABASE_URL!r} cannot be used: {exc}") from exc

if _db["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the ORM broker and the engine share one SQLite file: WAL lets readers run
    # beside the writer, IMMEDIATE takes the write lock at BEGIN so two writers queue on the
    # busy timeout instead of failing with "database is locked" on lock upgrade.
    _db["CONN_MAX_AGE"] = 0 if _db["NAME"] == ":memory:" else 60
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": env_float("SQLITE_BUSY_TIMEOUT", 20.0, minimum=0),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        **_db.get("OPTIONS", {}),
    }
DATABASES = {"default": _db}
# PostgreSQL: the engine's one-statement step record (flows/sql/onetrip.py) is a server-side
# prepared statement, planned once per connection. Turn off behind a pooler that cannot keep
# prepared statements across transactions (PgBouncer in transaction mode before 1.21).
FLOW_PG_PREPARED = env_bool("FLOW_PG_PREPARED", True)
if _db["ENGINE"] == "django.db.backends.postgresql" and FLOW_PG_PREPARED:
    # Django turns psycopg's prepared statements off (None). Django's own queries never use
    # them (its client-side binding cursor cannot); a threshold no query reaches lets the
    # engine prepare the statements it asks for (prepare=True) and no other.
    # And planned once: a custom plan for each call (the server's default for the first
    # calls and whenever it guesses one is cheaper) costs more than running it. Only
    # prepared statements have plans to cache, so Django's queries are unaffected.
    _options = _db.setdefault("OPTIONS", {})
    _options.setdefault("prepare_threshold", 2**31 - 1)
    _options["options"] = f"{_options.get('options', '')} -c plan_cache_mode=force_generic_plan"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache: shared between web and worker processes so /health sees the worker clusters ---
REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "flowmanager_cache",
        }
    }

# --- Auth ------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login throttling (django-axes, flowmanager/loginthrottle.py): after LOGIN_FAILURE_LIMIT wrong
# passwords for one user name from one address, that pair is refused (429, the page
# registration/lockout.html) for LOGIN_LOCKOUT_MINUTES, or until `manage.py axes_reset`.
AUTHENTICATION_BACKENDS = [
    "flowmanager.loginthrottle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15.0, minimum=0.1))
# Per pair: a guesser cannot lock a user out of every address, nor one address out for all.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
# Failures are counted; successful logins are not logged too (a table that would only grow).
AXES_DISABLE_ACCESS_LOG = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files (whitenoise) ----------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Request limits: an oversize body is refused with 413 before it is parsed ----------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 1_048_576, minimum=1024)

# The DEBUG 500 page and error mails mask the password of every URL with credentials
# (DATABASE_URL, REDIS_URL and their copies), not only settings named like secrets.
DEFAULT_EXCEPTION_REPORTER_FILTER = "flowmanager.reporting.CredentialsReporterFilter"

# --- Security headers when not in DEBUG ---------------------------------------------------------
if not DEBUG:
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SESSION_COOKIE_HTTPONLY = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)

# --- REST framework / OpenAPI -------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes DRF answer anonymous requests with 401.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # DRF's TokenAuthentication with its query built once per process (flows/sql/reads)
        "flows.api.authentication.PrebuiltTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["flows.api.renderers.SafeJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "flows.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )

SPECTACULAR_SETTINGS = {
    "TITLE": "Flow Manager API",
    "DESCRIPTION": (
        "Define flows of pluggable tasks with conditional branching and run them on "
        "django-q2 workers. Authenticate with `Authorization: Token <key>` "
        "(`python manage.py drf_create_token <user>`) or a logged-in session."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Executions and their steps both have a "status"; give each choice set its own name.
    "ENUM_NAME_OVERRIDES": {
        "ExecutionStatusEnum": "flows.models.ExecutionStatus",
        "StepStatusEnum": "flows.models.TaskRunStatus",
        "TriggerEnum": "flows.models.ExecutionTrigger",
        "ChannelKindEnum": "flows.models.ChannelKind",
        "AlertEventEnum": "flows.models.AlertEvent",
        "NotificationStateEnum": "flows.models.NotificationState",
    },
}

# --- Flow engine ------------------------------------------------------------------------------
FLOW_TASKS_DIR = Path(os.environ.get("FLOW_TASKS_DIR", "").strip() or BASE_DIR / "tasks")
# A task with no timeout of its own and none from its type gets this many seconds.
FLOW_DEFAULT_TASK_TIMEOUT = env_float("FLOW_DEFAULT_TASK_TIMEOUT", 300.0, minimum=0.001)
# Upper bound for any task's timeout; the django-q2 job timeout is derived from it.
FLOW_MAX_TASK_TIMEOUT = env_float("FLOW_MAX_TASK_TIMEOUT", 3600.0, minimum=1)
FLOW_DEFAULT_MAX_STEPS = env_int("FLOW_DEFAULT_MAX_STEPS", 1000, minimum=1)
# How long a worker's claim on a running step lasts without renewal. The worker renews it
# once a second (its watchdog thread does while a task blocks the loop), so a live worker
# misses five renewals in a row before another may take its step; a dead one's steps run
# again within about this long plus FLOW_REAP_EVERY_SECONDS (README "Faults and recovery").
FLOW_LEASE_SECONDS = env_float("FLOW_LEASE_SECONDS", 6.0, minimum=1)
# A task still blocking its worker's event loop this long after its timeout and grace ran
# out is given up: its step fails, the worker's other steps run again, and the worker process
# exits for the cluster to start a fresh one (flows/engine/watchdog.py).
FLOW_STUCK_LOOP_SECONDS = env_float("FLOW_STUCK_LOOP_SECONDS", 10.0, minimum=0.1)
# How often each worker process looks for steps whose lease expired and PENDING steps nobody
# claimed within FLOW_WAKE_AFTER_SECONDS (two indexed queries that find nothing, most times).
FLOW_REAP_EVERY_SECONDS = env_float("FLOW_REAP_EVERY_SECONDS", 1.0, minimum=0.1)
# A step lost with its worker this many times in a row (its task crashes or exits the worker
# process, say) fails for good instead of being run again by the reaper.
FLOW_MAX_LOST_ATTEMPTS = env_int("FLOW_MAX_LOST_ATTEMPTS", 3, minimum=1)
# A worker runs steps of one execution back to back, then yields to the queue after this
# many seconds (or steps) so that long flows do not starve the others.
FLOW_STEP_BUDGET_SECONDS = env_float("FLOW_STEP_BUDGET_SECONDS", 10.0, minimum=0)
FLOW_STEP_BUDGET_STEPS = env_int("FLOW_STEP_BUDGET_STEPS", 10_000, minimum=1)
# A condition's CEL expression is stopped after this many seconds and fails its step: it runs
# on the worker's dispatching thread, so its other executions wait meanwhile.
FLOW_EXPRESSION_BUDGET_SECONDS = env_float("FLOW_EXPRESSION_BUDGET_SECONDS", 1.0, minimum=0.01)
# How many executions one worker process runs at once: their tasks share one event loop, so a
# step waiting on I/O does not hold the process. Waiting coroutines cost a few KB each; the
# limit bounds the per-second lease/cancel query and a blocked loop's blast radius.
FLOW_WORKER_CONCURRENCY = env_int("FLOW_WORKER_CONCURRENCY", 500, minimum=1)
# A due PENDING step nobody has claimed for this long is woken again (its queue message was
# lost: a Redis restart, a worker killed with its prefetched jobs).
FLOW_WAKE_AFTER_SECONDS = env_float("FLOW_WAKE_AFTER_SECONDS", 3.0, minimum=0.5)
# With the Redis broker, how often each worker process looks for delayed steps (a retry's
# delay) that are due, and wakes them: one indexed query. The ORM broker delivers them itself.
FLOW_DUE_STEP_CHECK_SECONDS = env_float("FLOW_DUE_STEP_CHECK_SECONDS", 1.0, minimum=0.05)
# Executions one bulk start (POST /api/flows/{id}/executions/bulk/) may ask for: all are
# checked, then written in one transaction (the request body is bounded by MAX_REQUEST_BYTES).
FLOW_BULK_MAX = env_int("FLOW_BULK_MAX", 1000, minimum=1)
FLOW_MAX_RESULT_BYTES = env_int("FLOW_MAX_RESULT_BYTES", 1_048_576, minimum=1024)
FLOW_MAX_DOCUMENT_BYTES = env_int("FLOW_MAX_DOCUMENT_BYTES", 524_288, minimum=1024)
# Big things stay cheap to show: pages and the API show an input, parameters or a result
# past FLOW_SHOW_MAX_BYTES cut, with its size and a download link, and one answer (an
# execution's page or API detail) at most FLOW_SHOW_TOTAL_BYTES of them. The builder's form
# (whose rows grow with the square of the task count) and the graph (whose layout does too)
# stop past these many tasks: the JSON tab and a note take over.
FLOW_SHOW_MAX_BYTES = env_int("FLOW_SHOW_MAX_BYTES", 65_536, minimum=1024)
FLOW_SHOW_TOTAL_BYTES = env_int("FLOW_SHOW_TOTAL_BYTES", 1_048_576, minimum=1024)
FLOW_BUILDER_MAX_TASKS = env_int("FLOW_BUILDER_MAX_TASKS", 50, minimum=1)
FLOW_GRAPH_MAX_TASKS = env_int("FLOW_GRAPH_MAX_TASKS", 100, minimum=1)
# GET /health says "starting" (not "degraded") while no worker cluster has reported during
# this many seconds after the web process started.
FLOW_HEALTH_STARTING_SECONDS = env_float("FLOW_HEALTH_STARTING_SECONDS", 60.0, minimum=0)
# Where http_request may connect (FLOW_HTTP_ALLOW_PRIVATE, FLOW_HTTP_ALLOWED_HOSTS): the task
# reads the environment itself (tasks/ imports no Django); read here too so a bad value stops
# the web server, the worker and runflow at start instead of failing every http_request step.
try:
    _netpolicy.policy_from_env()
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None

# --- Secret store (flows/vault.py, README "Secrets") ------------------------------------------
# Fernet keys, comma-separated: the first encrypts, every one decrypts (so a new key goes first
# and `manage.py rotate_secret_keys` moves every value onto it). Never derived from SECRET_KEY.
# Without a key the application runs and refuses to store a secret, saying what to set.
FLOW_SECRET_KEYS = env_fernet_keys("FLOW_SECRET_KEYS")
# A worker keeps a secret's value this long after reading it, so that a step costs no query
# and no decryption more than one without (bench: the secrets stage). A replaced or deleted
# secret reaches the running workers within this time; 0 reads the store at every step.
FLOW_SECRET_CACHE_SECONDS = env_float("FLOW_SECRET_CACHE_SECONDS", 5.0, minimum=0.0)

# How often each worker process handles executions' ends (flow triggers, notifications,
# error-handler flows: flows/services/ends.py); what follows an end waits at most this long.
FLOW_ENDS_EVERY_SECONDS = env_float("FLOW_ENDS_EVERY_SECONDS", 1.0, minimum=0.05)

# SQLite: how often each worker process copies the write-ahead log back into the database file
# (flows/engine/checkpoint.py), so that no step's commit pays for it.
FLOW_CHECKPOINT_EVERY_SECONDS = env_float("FLOW_CHECKPOINT_EVERY_SECONDS", 0.25, minimum=0.01)

# --- Notifications and alerts (flows/notify.py, README "Notifications and alerts") -----------
# Email channels send through Django's email backend: SMTP with these, or any backend Django
# has (EMAIL_BACKEND=django.core.mail.backends.console.EmailBackend prints them).
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL: set one of them, not both")
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.1)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "flow-manager@localhost")
# The address alerts link to (the execution page where a step is approved), e.g.
# https://flows.example.com; empty: the links are paths only.
FLOW_BASE_URL = os.environ.get("FLOW_BASE_URL", "").strip().rstrip("/")
# How often each worker process sends due notifications and runs the periodic checks
# (running_longer_than, waiting_for_signal).
FLOW_NOTIFY_EVERY_SECONDS = env_float("FLOW_NOTIFY_EVERY_SECONDS", 1.0, minimum=0.05)
# A failed send is retried after FLOW_NOTIFY_RETRY_SECONDS, then twice as long each time, at
# most FLOW_NOTIFY_MAX_BACKOFF_SECONDS apart; it is given up after FLOW_NOTIFY_MAX_ATTEMPTS
# attempts or once FLOW_NOTIFY_GIVE_UP_SECONDS have passed since it was written.
FLOW_NOTIFY_RETRY_SECONDS = env_float("FLOW_NOTIFY_RETRY_SECONDS", 5.0, minimum=0.01)
FLOW_NOTIFY_MAX_BACKOFF_SECONDS = env_float("FLOW_NOTIFY_MAX_BACKOFF_SECONDS", 600.0, minimum=0.01)
FLOW_NOTIFY_MAX_ATTEMPTS = env_int("FLOW_NOTIFY_MAX_ATTEMPTS", 50, minimum=1)
FLOW_NOTIFY_GIVE_UP_SECONDS = env_float("FLOW_NOTIFY_GIVE_UP_SECONDS", 86_400.0, minimum=1.0)
# One send's time limit (a webhook's request, Slack's); email uses EMAIL_TIMEOUT.
FLOW_NOTIFY_TIMEOUT_SECONDS = env_float("FLOW_NOTIFY_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# --- Webhooks (README "Webhooks") -----------------------------------------------------------
# A delivery's body over this is refused (413) after reading at most this + 1 bytes; its own
# limit, apart from MAX_REQUEST_BYTES, since senders (GitHub: 25 MB) decide their payloads.
FLOW_WEBHOOK_MAX_BODY_BYTES = env_int("FLOW_WEBHOOK_MAX_BODY_BYTES", 1_048_576, minimum=1024)
# How much of each delivery's body is kept with it (shown on the flow's page; purged with
# retention, FLOW_PURGE_AFTER_DAYS).
FLOW_WEBHOOK_PAYLOAD_KEEP_BYTES = env_int("FLOW_WEBHOOK_PAYLOAD_KEEP_BYTES", 65_536, minimum=0)

# --- django-q2 (see DJANGO-Q2.md in the shared notes for why each value) --------------------
Q_WORKERS = env_int("Q_WORKERS", 2, minimum=1)
_job_timeout = int(FLOW_MAX_TASK_TIMEOUT + 120)
Q_CLUSTER = {
    "name": os.environ.get("Q_CLUSTER_NAME", "flowmanager"),
    "workers": Q_WORKERS,
    # Less prefetch: fewer jobs to lose (Redis) or run twice (ORM) when a cluster dies.
    "queue_limit": Q_WORKERS,
    "timeout": _job_timeout,
    # Longer than any job may run, so a slow job is never handed out a second time.
    "retry": _job_timeout * 2 + 60,
    # Jobs never raise (flows.jobs), so this is only a backstop against poison messages.
    "max_attempts": 3,
    "ack_failures": True,
    # Results of successful jobs are not needed: the engine's own tables hold the truth.
    "save_limit": -1,
    "recycle": 1000,
    "max_rss": 512 * 1024,
    "catch_up": False,
    "poll": 0.05,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
if env_bool("Q_SYNC", False):
    Q_CLUSTER["sync"] = True

# --- Logging: one line per event, to stderr ------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    # Expected 4xx answers (a 404, a 409) log at INFO, not WARNING (flows/logfilters.py).
    # While a step that uses secrets runs, their values are masked in every line this process
    # writes (flows/masking.py): a library the task calls may log what it sends.
    "filters": {
        "client_errors_as_info": {"()": "flows.logfilters.ClientErrorsAsInfo"},
        "mask_secrets": {"()": "flows.masking.MaskSecrets"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "stream": "ext://sys.stderr",
            "filters": ["mask_secrets"],
        },
    },
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        "django.request": {"filters": ["client_errors_as_info"]},
        "flows": {"handlers": ["stderr"], "level": LOG_LEVEL, "propagate": False},
        "tasks": {"handlers": ["stderr"], "level": LOG_LEVEL, "propagate": False},
        # django-q2 logs as "django-q" (with a dash).
        "django-q": {
            "handlers": ["stderr"],
            "level": os.environ.get("Q_LOG_LEVEL", "WARNING").upper(),
            "propagate": False,
        },
    },
}

# --- Metrics (/metrics, Prometheus text format; README "Metrics") ---------------------------
# Without either, /metrics needs a logged-in session or an API token, like the API.
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", False)
# A scraper sends "Authorization: Bearer <METRICS_TOKEN>".
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "").strip()
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters long")
# A "flow" label on the execution metrics: one series per flow and status, so leave it off
# when flows are many or made by users.
METRICS_FLOW_LABEL = env_bool("METRICS_FLOW_LABEL", False)

# --- Retention (README "Retention") ----------------------------------------------------------
# Set: a daily django-q2 schedule deletes finished executions older than this many days
# (created, updated or removed at `manage.py migrate`). Unset: executions are kept forever.
FLOW_PURGE_AFTER_DAYS = env_int("FLOW_PURGE_AFTER_DAYS", 0, minimum=1)
