"""A deploy proves the app reads its settings, and `fab status` sees every celery beat: a Redis
fleet of a Debian 13 host (broker, worker, beat) and a Debian 12 worker, both booted from snapshots
of deployed hosts (tests/integration/snapshots.py) and made this fleet by the module's deploy.

What a deployer would check by hand: an app that takes only CELERY_BROKER_URL from the Django
settings (not the whole CELERY_* namespace) is refused before anything restarts, with the
setting it misses and the fix; an app that raises on import is refused with its traceback's
last line; the fixed app deploys. Then two beats (one started by hand, one left over after
beat moved) make `fab status` exit 1 naming both hosts.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import EXAMPLE, Project, install_example_project, wait_for
from .snapshots import start_deployed

HOSTS = {"as-a": "trixie", "as-b": "bookworm"}
CONF = "/etc/supervisor/demo_proj-supervisord.conf"
CTL = f"runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c {CONF}"
APP_FILE = "/opt/arches/demo_proj/demo_proj/celery.py"
KEYPREFIX = 'CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]'
FIX = 'app.config_from_object("django.conf:settings", namespace="CELERY")'
# the shape of app that issue 20 met: the broker URL taken from the settings, nothing else
BROKER_URL_ONLY = '''"""An app that reads only CELERY_BROKER_URL from the Django settings."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_proj.settings")
from django.conf import settings  # noqa: E402

app = Celery("demo_proj")
app.conf.broker_url = settings.CELERY_BROKER_URL
app.autodiscover_tasks(["demo_proj"])
'''
RAISES = '''"""An app that cannot load."""
raise RuntimeError("demo_proj cannot start: DATABASES is not configured")
'''
HAND_BEAT = ("cd /opt/arches/demo_proj && setsid -f runuser -u arches -- /opt/arches/venv/bin/celery "
             "-A demo_proj.celery beat --schedule /tmp/hand-beat-schedule --pidfile= >/tmp/hand-beat.log 2>&1 "
             "</dev/null")


class Fleet:
    def __init__(self, fleet, project: Project):
        self.fleet, self.project = fleet, project

    def pids(self, host: str) -> dict[str, int]:
        out = self.fleet.exec(host, f"LC_ALL=C {CTL} status", check=False).stdout
        return {p[0]: int(p[3].rstrip(",")) for p in (line.split() for line in out.splitlines())
                if len(p) >= 4 and p[1] == "RUNNING"}

    def write_app(self, text: str) -> None:
        for host in HOSTS:
            self.fleet.exec(host, f"cat > {APP_FILE}", input=text)

    def password(self) -> str:
        return self.fleet.exec("as-a", "cat /var/lib/fabcelery/demo_proj/broker-password").stdout.strip()

    def beat_pids(self, host: str) -> list[int]:
        """Independently of fabcelery: the processes that are the virtualenv's celery running beat
        (not runuser, which started one)."""
        out = self.fleet.exec(host, "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null | grep -qE "
                                    "'^/opt/arches/venv/bin/python[0-9.]* /opt/arches/venv/bin/celery -A "
                                    "demo_proj.celery beat' && echo ${f#/proc/}; done; true").stdout
        return [int(line.split("/")[0]) for line in out.split()]


@pytest.fixture(scope="module")
def app_fleet(fleet, tmp_path_factory):
    """The fleet from snapshots of deployed hosts, made the module's fleet by its deploy (new node
    names and addresses: the programs change, so the app is checked); the check in a first deploy
    on bare hosts is test_deploy's."""
    kinds = {"as-a": "broker", "as-b": "worker"}
    with ThreadPoolExecutor(len(HOSTS)) as pool:
        started = dict(zip(HOSTS, pool.map(lambda item: start_deployed(fleet, *item, kind=kinds[item[0]]),
                                           HOSTS.items()), strict=True))
    for host in started.values():
        install_example_project(fleet, host)
    project = Project(fleet, tmp_path_factory.mktemp("app-settings"), {
        "as-a": {"roles": ["broker", "worker", "beat"], "internal_address": started["as-a"].internal_ip},
        "as-b": {"roles": ["worker"]},
    })
    first = project.fab("deploy")
    yield Fleet(fleet, project), first
    for host in started.values():
        fleet.remove(host)


def test_a_correct_app_is_checked_and_deploys(app_fleet):
    _, first = app_fleet
    assert first.returncode == 0, first.output
    for host in HOSTS:
        assert re.search(rf"^{host}\s+supervisord\s+check that demo_proj.celery sees the settings of "
                         r"settings_local.py \(loaded as arches\)$", first.output, re.M), first.output


def test_a_deploy_with_nothing_changed_does_not_load_the_app(app_fleet):
    fleet, _ = app_fleet
    run = fleet.project.fab("deploy")
    assert run.returncode == 0, run.output
    assert run.recap() == {h: {"ok": 7, "changed": 0, "failed": 0} for h in HOSTS}
    assert "check that" not in run.output


def test_an_app_that_reads_only_the_broker_url_is_refused_before_anything_restarts(app_fleet):
    fleet, _ = app_fleet
    before = {h: fleet.pids(h) for h in HOSTS}
    assert all(before.values())
    fleet.write_app(BROKER_URL_ONLY)
    fleet.project.data["celery"]["concurrency"] = 3      # a change that restarts the workers
    fleet.project.write()
    run = fleet.project.fab("deploy")
    assert run.returncode == 1, run.output
    line = next(line for line in run.output.splitlines() if line.startswith("as-a ") and "failed:" in line)
    assert ("the Celery app demo_proj.celery does not see a setting of fabcelery's block in "
            f"/opt/arches/demo_proj/demo_proj/settings_local.py: {KEYPREFIX}") in line, line
    # the broker host failed: the other hosts are left as they are
    assert re.search(r"^as-b\s+deploy\s+skipped: the broker host as-a failed$", run.output, re.M), run.output
    assert "NOPERM" in run.output and FIX in run.output and "only CELERY_BROKER_URL" in run.output
    assert fleet.password() not in run.output
    assert {h: fleet.pids(h) for h in HOSTS} == before          # nothing restarted
    # the new program file is in place on the broker host, held back until the app is fixed
    program_file = "/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf"
    assert "--concurrency=3" in fleet.fleet.exec("as-a", f"cat {program_file}").stdout


def refuse_an_app_that_raises(fleet: Fleet):
    """as-b with an app that raises on import, the broker host with the fixed app, and a change to
    apply on both (--concurrency=3, as the test before leaves it): the deploy, which refuses as-b."""
    fleet.write_app((EXAMPLE / "demo_proj" / "celery.py").read_text())
    fleet.fleet.exec("as-b", f"cat > {APP_FILE}", input=RAISES)
    fleet.project.data["celery"]["concurrency"] = 3
    fleet.project.write()
    run = fleet.project.fab("deploy")
    fleet.held_back = True
    return run


def test_an_app_that_raises_on_import_is_refused_with_its_tracebacks_last_line(app_fleet):
    """On the Debian 12 worker; the broker host has the fixed app and applies what was held back."""
    fleet, _ = app_fleet
    before = fleet.pids("as-b")
    run = refuse_an_app_that_raises(fleet)
    assert run.returncode == 1, run.output
    assert re.search(r"^as-b\s+supervisord\s+failed: check that .*: the Celery app demo_proj.celery does not "
                     r"load \(as the worker would, in /opt/arches/demo_proj\): RuntimeError: demo_proj cannot "
                     "start: DATABASES is not configured$", run.output, re.M), run.output
    assert 'raise RuntimeError("demo_proj cannot start: DATABASES is not configured")' in run.output
    assert fleet.pids("as-b") == before
    assert run.recap()["as-a"]["failed"] == 0


def test_the_fixed_app_deploys_and_what_was_held_back_is_applied(app_fleet):
    fleet, _ = app_fleet
    if not getattr(fleet, "held_back", False):      # run alone: as the test before leaves the fleet
        refused = refuse_an_app_that_raises(fleet)
        assert refused.returncode == 1, refused.output
    before = fleet.pids("as-b")
    fleet.write_app((EXAMPLE / "demo_proj" / "celery.py").read_text())
    run = fleet.project.fab("deploy")
    assert run.returncode == 0, run.output
    assert fleet.pids("as-b")["celery"] != before["celery"]          # --concurrency=3 applied now
    assert fleet.project.fab("deploy").recap() == {h: {"ok": 7, "changed": 0, "failed": 0} for h in HOSTS}


def test_a_beat_started_by_hand_on_another_host_fails_status_naming_both_hosts(app_fleet):
    fleet, _ = app_fleet
    assert fleet.project.fab("status").returncode == 0
    fleet.fleet.exec("as-b", HAND_BEAT)
    try:
        assert wait_for(lambda: fleet.beat_pids("as-b"), 20)
        (pid,) = fleet.beat_pids("as-b")
        run = fleet.project.fab("status")
        assert run.returncode == 1, run.output
        assert re.search(rf"^as-b\s+celery beat\s+EXTRA\s+{pid}\s+-\s+celery beat runs on as-b and on as-a \(the "
                         r"inventory's beat host\)\. Two beats send every periodic task twice\. This one is started "
                         r"outside supervisord by uid \d+ \(.*\): stop it$", run.output, re.M), run.output
        assert re.search(r"^as-a\s+celerybeat\s+RUNNING", run.output, re.M)
        assert re.search(r"^as-b\s+ok=\d+ changed=0 failed=1", run.output, re.M)
    finally:
        fleet.fleet.exec("as-b", "kill " + " ".join(map(str, fleet.beat_pids("as-b"))) + " 2>/dev/null; true")
    assert wait_for(lambda: not fleet.beat_pids("as-b"), 20)
    assert fleet.project.fab("status").returncode == 0


def test_a_beat_left_behind_when_beat_moved_fails_status_until_the_fleet_is_deployed(app_fleet):
    fleet, _ = app_fleet
    hosts = fleet.project.data["hosts"]
    hosts["as-a"]["roles"], hosts["as-b"]["roles"] = ["broker", "worker"], ["worker", "beat"]
    fleet.project.write()
    moved = fleet.project.fab("-H", "as-b", "deploy")        # the new beat host only: as-a keeps its beat
    assert moved.returncode == 0, moved.output
    old = fleet.pids("as-a")["celerybeat"]
    run = fleet.project.fab("status", "--json")
    assert run.returncode == 1, run.output
    document = json.loads(run.output[:run.output.rindex("}") + 1])
    rows = {(h["host"], p["name"]): p for h in document["hosts"] for p in h["programs"]}
    assert rows[("as-a", "celerybeat")]["state"] == "EXTRA" and rows[("as-a", "celerybeat")]["pid"] == old
    assert rows[("as-a", "celerybeat")]["detail"].startswith(
        "celery beat runs on as-a and on as-b (the inventory's beat host). Two beats send every periodic task twice. "
        "This one is supervisord's program celerybeat, left from before beat moved: `fab deploy` removes it")
    assert rows[("as-b", "celerybeat")]["state"] == "RUNNING"
    done = fleet.project.fab("deploy")
    assert done.returncode == 0, done.output
    assert fleet.beat_pids("as-a") == [] and len(fleet.beat_pids("as-b")) == 1
    assert fleet.project.fab("status").returncode == 0

