"""Minimal Django settings for the demo project (an Arches project has many more)."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "demo-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "demo_proj"]
DATABASES = {}
USE_TZ = True

CELERY_BROKER_URL = ""
CELERY_TASK_SERIALIZER = "json"
# Where beat's periodic task writes its heartbeat: the worker's home (HOME is set by
# supervisor), which exists on every worker host of a fleet.
DEMO_HEARTBEAT_FILE = "~/heartbeat"
TIME_ZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {"task": "demo_proj.tasks.heartbeat", "schedule": 5.0},
}

try:
    from .settings_local import *  # noqa: F401,F403 - as Arches does
except ImportError:
    pass

# Results come back through the broker, so a caller can wait for them.
CELERY_RESULT_BACKEND = CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else "rpc://"
