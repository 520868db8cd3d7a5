"""The demo project's Celery app, laid out like an Arches project's."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_proj.settings")

app = Celery("demo_proj")
# CELERY_* settings from Django's settings (settings.py, then settings_local.py)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["demo_proj"])
