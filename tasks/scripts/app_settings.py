"""Does the project's Celery app see what the fabcelery block of settings_local.py sets?

Run by the deploy (tasks/appcheck.py) before any program starts or restarts: as the project
user, by the virtualenv's Python (never as root: it imports the project's code), with the
worker's environment, in the project's directory, as `celery -A APP worker` would load the app:

    python -c SCRIPT APP PROJECT_PATH SETTINGS_MODULE EXPECTED_JSON

EXPECTED_JSON is what the block sets, without the broker password (expected_settings below
reads the same shape). Silent with exit status 0 when the app sees all of it; otherwise a
paragraph on stderr (its first line says what is wrong) and exit status 1. The app's broker
password is never printed: URLs are shown without it.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from urllib.parse import unquote, urlsplit

FIX = ('app.config_from_object("django.conf:settings", namespace="CELERY")')
CELERY_DEFAULT_BROKER = "amqp://guest@localhost//"


def url_parts(url: str) -> dict:
    """A broker URL's scheme, host, port, virtual host (or Redis database) and user: never its password."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    return {"scheme": parts.scheme, "host": (parts.hostname or ""), "port": port,
            "vhost": unquote(parts.path[1:] if parts.path.startswith("/") else parts.path),
            "user": unquote(parts.username or "")}


def broker_urls(value) -> list[dict] | None:
    """The broker setting as kombu reads it (one URL, a ';'-separated list, or a list), each
    without its password; None when the app has none."""
    if not value:
        return None
    urls = value if isinstance(value, (list, tuple)) else str(value).split(";")
    return [url_parts(u) for u in urls if str(u).strip()]


def show_url(parts: dict) -> str:
    user = f"{parts['user']}@" if parts["user"] else ""
    port = f":{parts['port']}" if parts["port"] else ""
    return f"{parts['scheme']}://{user}{parts['host']}{port}/{parts['vhost']}"


def show_urls(urls: list[dict] | None) -> str:
    if not urls:
        return f"none (so Celery's default, {CELERY_DEFAULT_BROKER})"
    return ";".join(show_url(u) for u in urls)


def _options(value) -> dict:
    return value if isinstance(value, dict) else {}


def seen_settings(conf) -> dict:
    """The app's effective configuration, in the shape of EXPECTED_JSON (no password)."""
    backend = conf.get("result_backend") or ""
    return {
        "broker": broker_urls(conf.get("broker_url")),
        "keyprefix": _options(conf.get("broker_transport_options")).get("global_keyprefix"),
        "result_backend": urlsplit(str(backend)).scheme if backend else "",
        "result_keyprefix": _options(conf.get("result_backend_transport_options")).get("global_keyprefix"),
        "queue_type": conf.get("task_default_queue_type"),
        "confirm_publish": _options(conf.get("broker_transport_options")).get("confirm_publish"),
        "visibility_timeout": _options(conf.get("broker_transport_options")).get("visibility_timeout"),
        "task_serializer": conf.get("task_serializer"),
        "result_serializer": conf.get("result_serializer"),
        "accept_content": sorted(conf.get("accept_content") or []),
    }


def _shown(value) -> str:
    return "none" if value is None or value == "" else repr(value)


def differences(expected: dict, seen: dict) -> list[tuple[str, str, str, str]]:
    """Each setting of the block that the app does not see: (setting, what the block sets, what
    the app has, why it matters)."""
    found = []
    if expected.get("broker") and seen.get("broker") != expected["broker"]:
        found.append(("CELERY_BROKER_URL", show_urls(expected["broker"]), show_urls(seen.get("broker")),
                      "the workers would not use the broker and account that fabcelery set up"))
    prefix = expected.get("keyprefix")
    if prefix and seen.get("keyprefix") != prefix:
        found.append(('CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]', repr(prefix),
                      _shown(seen.get("keyprefix")),
                      f"the project's Redis account may touch only keys that begin with {prefix!r}: "
                      "Redis refuses the others (NOPERM) and the worker takes no task"))
    if prefix and seen.get("result_backend") in ("redis", "rediss") and seen.get("result_keyprefix") != prefix:
        found.append(('CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS["global_keyprefix"]', repr(prefix),
                      _shown(seen.get("result_keyprefix")),
                      "the Redis result backend would store results outside the account's keys (NOPERM)"))
    timeout = expected.get("visibility_timeout")
    if timeout and seen.get("visibility_timeout") != timeout:
        found.append(('CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]', repr(timeout),
                      _shown(seen.get("visibility_timeout")),
                      "Redis would hand a task not yet acknowledged after the app's shorter time to another "
                      "worker, which runs it a second time"))
    if expected.get("quorum"):
        if seen.get("queue_type") != "quorum":
            found.append(("CELERY_TASK_DEFAULT_QUEUE_TYPE", "'quorum'", _shown(seen.get("queue_type") or "classic"),
                          "on the cluster the queues would be classic queues, on one node only: "
                          "lost with that node"))
        if seen.get("confirm_publish") is not True:
            found.append(('CELERY_BROKER_TRANSPORT_OPTIONS["confirm_publish"]', "True",
                          _shown(seen.get("confirm_publish")),
                          "a task would count as sent before the cluster has it"))
    for key, setting in (("task_serializer", "CELERY_TASK_SERIALIZER"),
                         ("result_serializer", "CELERY_RESULT_SERIALIZER")):
        if expected.get(key) and seen.get(key) != expected[key]:
            found.append((setting, repr(expected[key]), _shown(seen.get(key)),
                          "messages would not be JSON"))
    if expected.get("accept_content") and seen.get("accept_content") != sorted(expected["accept_content"]):
        found.append(("CELERY_ACCEPT_CONTENT", repr(expected["accept_content"]), _shown(seen.get("accept_content")),
                      "a pickled message could run code in the worker"))
    return found


def report(app: str, settings_file: str, found: list[tuple[str, str, str, str]]) -> str:
    """The paragraph for settings the app does not see; its first line names each of them."""
    names = ", ".join(f[0] for f in found)
    count = "a setting" if len(found) == 1 else f"{len(found)} settings"
    lines = [f"the Celery app {app} does not see {count} of fabcelery's block in {settings_file}: {names}"]
    for setting, wanted, has, why in found:
        lines.append(f"  {setting}: the block sets {wanted}, the app has {has} ({why})")
    lines += [
        "The usual cause: the app takes only CELERY_BROKER_URL from the Django settings "
        "(app.conf.broker_url = settings.CELERY_BROKER_URL) instead of every CELERY_* setting.",
        f"The fix, where the app is made: {FIX}, as Arches and Celery's Django guide do; then deploy again.",
        "Nothing was started or restarted.",
    ]
    return "\n".join(lines)


def load_failure(app: str, path: str, trace: str) -> str:
    """The paragraph for an app that does not load: the traceback's last line first."""
    lines = [line for line in trace.rstrip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no traceback"
    return "\n".join([
        f"the Celery app {app} does not load (as the worker would, in {path}): {last}",
        "The end of its traceback:",
        *("  " + line for line in lines[-8:]),
        "Nothing was started or restarted: fix the project's code or settings and deploy again.",
    ])


def main(argv: list[str]) -> int:
    app_name, path, settings_module, expected_json = argv
    expected = json.loads(expected_json)
    os.chdir(path)                       # as the worker's `directory=`
    sys.path.insert(0, path)
    try:
        from celery.app.utils import find_app

        app = find_app(app_name)         # as `celery -A APP` finds it
        if "DJANGO_SETTINGS_MODULE" not in os.environ and settings_module and os.path.exists(
                os.path.join(path, *settings_module.split(".")) + ".py"):
            os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
        seen = seen_settings(app.conf)   # reading the configuration loads the settings
    except BaseException:  # noqa: BLE001 - SystemExit too: whatever stops the app loading is reported
        print(load_failure(app_name, path, traceback.format_exc()), file=sys.stderr)
        return 1
    found = differences(expected, seen)
    if found:
        print(report(app_name, expected.get("settings_file", "settings_local.py"), found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
