"""Program files live in /etc/supervisor/NAME-programs.d, which only the project's supervisord
includes, never in /etc/supervisor/conf.d, which Debian's root supervisord includes too.

Tables for a server as the earlier fabcelery left it (files in conf.d): facts in, the
actions of the deploy (and undeploy) out. And the script that makes Debian's supervisord
drop our programs, run against a real supervisord.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.configs import main_needs_restart, sha256
from tasks.deploy import probe_spec
from tasks.layout import SYSTEM_SUPERVISORD_CONF, Layout
from tasks.probe import PathState
from tasks.programs import legacy_program
from tasks.scripts import text
from tasks.undeploy import plan_undeploy, undeploy_spec

from .conftest import deployed_facts, make_inventory, target_of
from .test_steps import steps, summaries

CONFD = "/etc/supervisor/conf.d"
DIR = "/etc/supervisor/my_proj-programs.d"
FILE = PathState("file", "root", "root", "644")
MOVED = "reread and update (program files moved out of /etc/supervisor/conf.d: nothing restarts)"
DROP = ("the system's supervisord (/etc/supervisor/supervisord.conf): stop and remove celery, celerybeat if it "
        "loaded them from /etc/supervisor/conf.d")


def earlier(before, host="prod", debian=False, listed=()):
    """The facts of a server deployed by fabcelery before the move with the inventory `before`:
    its program files in conf.d, supervisord.conf including them from there (with `debian`:
    Debian's supervisor package has its config there; `listed`: other files in conf.d)."""
    inventory = before
    facts = deployed_facts(before, host)
    layout = Layout(inventory.project)
    checksums, paths, contents = dict(facts.checksums), dict(facts.paths), dict(facts.contents)
    moved = []
    for path in [p for p in checksums if p.startswith(DIR + "/")]:
        old = layout.legacy_conf(path)
        checksums[old] = checksums.pop(path)
        paths.pop(path, None)
        moved.append(old)
    paths.pop(DIR, None)
    main = old_main(deployed_main(before, host))
    checksums[layout.supervisord_conf], contents[layout.supervisord_conf] = sha256(main), main
    if debian:
        paths[SYSTEM_SUPERVISORD_CONF] = FILE
    listings = {**facts.listings, layout.pool_conf_glob: (), layout.legacy_programs_glob: tuple(sorted([*moved,
                                                                                                       *listed]))}
    return replace(facts, checksums=checksums, paths=paths, contents=contents, listings=listings)


def deployed_main(inventory, host="prod") -> str:
    from tasks.deploy import plan_deploy

    from .conftest import PASSWORD, fresh_facts
    plans = plan_deploy(target_of(inventory, host), fresh_facts(), PASSWORD)
    return next(u.content for p in plans for a in p.actions for u in a.uploads
                if u.target == "/etc/supervisor/my_proj-supervisord.conf")


def old_main(text_: str) -> str:
    """supervisord.conf as fabcelery wrote it before the move (templates/supervisord.conf.j2 at 02e0fbe)."""
    lines = [line for line in text_.splitlines(keepends=True) if not line.startswith("; a directory that only")
             and not line.startswith("; the root supervisord of Debian")]
    return "".join(lines).replace(f"files = {DIR}/my_proj-*.conf", f"files = {CONFD}/my_proj-*.conf")


def test_the_programs_live_in_a_directory_of_their_own_that_only_the_projects_supervisord_includes():
    inventory = make_inventory()
    layout = Layout(inventory.project)
    assert layout.celeryd_conf == f"{DIR}/my_proj-celeryd.conf"
    assert layout.celerybeat_conf == f"{DIR}/my_proj-celerybeat.conf"
    assert layout.pool_conf("exports") == f"{DIR}/my_proj-celeryd-exports.conf"
    assert f"files = {DIR}/my_proj-*.conf\n" in deployed_main(inventory)
    # a project named conf: never Debian's conf.d
    assert Layout(make_inventory(project__name="conf").project).programs_dir == "/etc/supervisor/conf-programs.d"


@pytest.mark.parametrize("path, program", [
    (f"{CONFD}/my_proj-celeryd.conf", "celery"),
    (f"{CONFD}/my_proj-celerybeat.conf", "celerybeat"),
    (f"{CONFD}/my_proj-celeryd-exports.conf", "exports"),
    (f"{CONFD}/my_proj-celeryd-ex-ports.conf", None),       # not a pool's name: not a file of ours
    (f"{CONFD}/my_proj-celeryfoo.conf", None),
    (f"{CONFD}/other.conf", None),
    (f"{CONFD}/my_proj2-celeryd.conf", None),               # another project's
    (f"{DIR}/my_proj-celeryd.conf", None),                  # the new place is not the old one
])
def test_which_files_in_conf_d_are_ours(path, program):
    assert legacy_program(Layout(make_inventory().project), path) == program


@pytest.mark.parametrize("old, new, restart", [
    (None, "[supervisord]\nx=1\n", True),
    ("[supervisord]\nx=1\n[include]\nfiles = /a/*.conf\n", "[supervisord]\nx=1\n[include]\nfiles = /b/*.conf\n", False),
    ("; a\n[supervisord]\nx=1\n", "; b\n[supervisord]\n; c\nx=1\n", False),
    ("[supervisord]\nx=1\n[include]\nfiles = /a/*.conf\n", "[supervisord]\nx=2\n[include]\nfiles = /b/*.conf\n", True),
    ("[supervisord]\nx=1\n", "[supervisord]\nx=1\n[unix_http_server]\nchmod=0700\n", True),
])
def test_supervisord_restarts_only_when_more_than_its_include_or_comments_changed(old, new, restart):
    assert main_needs_restart(old, new) is restart


def test_the_probe_asks_where_the_earlier_version_kept_the_files_and_whether_debians_supervisor_is_there():
    inventory = make_inventory()
    spec = probe_spec(target_of(inventory))
    assert (CONFD, "my_proj-celery*.conf") in spec.listings
    assert {f"{CONFD}/my_proj-celeryd.conf", f"{CONFD}/my_proj-celerybeat.conf"} <= set(spec.checksums)
    assert SYSTEM_SUPERVISORD_CONF in spec.paths and DIR in spec.paths
    assert "/etc/supervisor/my_proj-supervisord.conf" in spec.contents
    assert "supervisor" in spec.packages


# (case, inventory changes, facts changes, configs summaries, supervisord summaries, recap notes)
MOVES = [
    ("same programs: moved, reread, nothing restarts", {}, {},
     ["install my_proj-supervisord.conf, my_proj-celeryd.conf, my_proj-celerybeat.conf",
      "remove my_proj-celerybeat.conf, my_proj-celeryd.conf from /etc/supervisor/conf.d "
      "(program files moved out of it)"],
     [MOVED]),
    ("with Debian's supervisor: it drops our programs first", {}, {"debian": True},
     None, [DROP, MOVED]),
    ("the worker's file changed too: it alone restarts", {"celery__concurrency": 4}, {},
     None, ["reread and update (celery, program files moved out of /etc/supervisor/conf.d)"]),
    ("a file in conf.d that is not ours stays", {},
     {"listed": (f"{CONFD}/other.conf", f"{CONFD}/my_proj-celeryfoo.conf")}, None, [MOVED]),
]


@pytest.mark.parametrize("case, changes, facts_changes, configs, supervisord", MOVES, ids=[m[0] for m in MOVES])
def test_a_server_of_the_earlier_version_is_moved_over(case, changes, facts_changes, configs, supervisord):
    before = make_inventory()
    inventory = make_inventory(**changes)
    facts = earlier(before, **facts_changes)
    plans = steps(inventory, facts)
    assert summaries(plans["system"]) == [f"create {DIR}"]
    if configs is not None:
        assert summaries(plans["configs"]) == configs
    assert summaries(plans["supervisord"]) == supervisord
    assert plans["configs"].configs.moved_out == (f"{CONFD}/my_proj-celerybeat.conf", f"{CONFD}/my_proj-celeryd.conf")
    assert plans["configs"].configs.added_programs == ()
    moved = [a for a in plans["supervisord"].actions if a.summary.startswith("reread")]
    assert moved[0].note == "program files moved out of /etc/supervisor/conf.d"
    # the removal is recorded first: a deploy cut off after it still owes Debian's supervisord the drop
    remove = next(a for a in plans["configs"].actions if "moved out of it" in a.summary)
    assert remove.script.index(target_of(inventory).layout.pending_apply) < remove.script.index("rm -f")


def test_beat_moved_to_another_host_while_its_file_was_in_conf_d_is_stopped_and_removed():
    prod = {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.5"}
    before = make_inventory(hosts={"prod": prod, "other": {"roles": ["worker"]}})
    after = make_inventory(hosts={"prod": {**prod, "roles": ["broker", "worker"]},
                                  "other": {"roles": ["worker", "beat"]}})
    plans = steps(after, earlier(before, debian=True))
    assert plans["configs"].configs.removed_programs == ("celerybeat",)
    assert summaries(plans["supervisord"]) == [
        DROP, "reread and update (stop and remove celerybeat, program files moved out of /etc/supervisor/conf.d)"]


def test_a_deploy_cut_off_after_the_move_drops_from_debians_supervisord_on_the_next_run():
    inventory = make_inventory()
    layout, pending = Layout(inventory.project), target_of(inventory).layout.pending_apply
    facts = deployed_facts(inventory)
    facts = replace(facts, paths={**facts.paths, SYSTEM_SUPERVISORD_CONF: FILE}, contents={
        **facts.contents, pending: f"{CONFD}/my_proj-celeryd.conf\n{CONFD}/my_proj-celerybeat.conf\n"})
    plans = steps(inventory, facts)
    assert plans["configs"].configs.moved_out == (f"{CONFD}/my_proj-celerybeat.conf", f"{CONFD}/my_proj-celeryd.conf")
    assert summaries(plans["supervisord"]) == [DROP, MOVED]
    # and with supervisord.conf in the record: what changed in it is not known, so it restarts
    facts = replace(facts, contents={**facts.contents, pending: f"{layout.supervisord_conf}\n"
                                     f"{CONFD}/my_proj-celeryd.conf\n"})
    assert summaries(steps(inventory, facts)["supervisord"]) == [
        "the system's supervisord (/etc/supervisor/supervisord.conf): stop and remove celery if it loaded them "
        "from /etc/supervisor/conf.d", "restart supervisord (its own config changed)"]


def test_a_server_of_this_version_has_nothing_to_move():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    other = {Layout(inventory.project).legacy_programs_glob: (f"{CONFD}/other.conf",)}
    facts = replace(facts, paths={**facts.paths, SYSTEM_SUPERVISORD_CONF: FILE}, listings={**facts.listings, **other})
    plans = steps(inventory, facts)
    assert not any(p.changed for p in plans.values()), {n: summaries(p) for n, p in plans.items()}


@pytest.mark.parametrize("debian, package", [(False, False), (True, True)])
def test_undeploy_removes_the_files_in_conf_d_and_has_debians_supervisord_drop_them_first(debian, package):
    inventory = make_inventory()
    facts = earlier(inventory, debian=debian)
    facts = replace(facts, packages={**facts.packages, "supervisor": package},
                    paths={**facts.paths, CONFD: PathState("directory", "root", "root", "755")})
    plans = {p.name: p for p in plan_undeploy(target_of(inventory), facts, purge=True)}
    first = plans["supervisord"].actions[0]
    what = "remove my_proj-celerybeat.conf, my_proj-celeryd.conf from /etc/supervisor/conf.d"
    if debian:
        assert first.summary == what + " and the programs celery, celerybeat from the system's supervisord"
        assert "drop_programs" not in first.script and "reloadConfig" in first.script
    else:
        assert first.summary == what
    assert first.script.startswith(f"rm -f -- {CONFD}/my_proj-celerybeat.conf {CONFD}/my_proj-celeryd.conf")
    system = [a.summary for a in plans["system"].actions]
    # conf.d is Debian's package's while it is installed; else an earlier fabcelery's, removed once empty
    assert (f"remove {CONFD} if empty" in system) is not package
    # a server of this version: the programs' directory goes too
    now = plan_undeploy(target_of(inventory), deployed_facts(inventory), purge=True)
    assert f"remove {DIR}" in [a.summary for p in now if p.name == "system" for a in p.actions]
    spec = undeploy_spec(target_of(inventory))
    assert (CONFD, "my_proj-celery*.conf") in spec.listings and SYSTEM_SUPERVISORD_CONF in spec.paths


# --- the script, against a real supervisord (the virtualenv's) --------------------------------

SUPERVISORD_CONF = """[unix_http_server]
file={dir}/s.sock   ; Debian's file= is /var/run/supervisor.sock
[supervisord]
logfile={dir}/d.log
pidfile={dir}/d.pid
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{dir}/s.sock
[include]
files = {dir}/conf.d/*.conf
"""


@pytest.fixture
def system_supervisord():
    # a short path: a unix socket's path is at most 107 bytes
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="sv", dir="/tmp"))
    (directory / "conf.d").mkdir()
    for name, program in (("my_proj-celeryd", "celery"), ("my_proj-celerybeat", "celerybeat"), ("other", "other"),
                          ("own", "celery_own")):
        (directory / "conf.d" / f"{name}.conf").write_text(f"[program:{program}]\ncommand=sleep 1000\nstartsecs=0\n")
    conf = directory / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(dir=directory))
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "supervisord", "-c", conf], check=True)
    ctl = lambda *args: subprocess.run([bin_dir / "supervisorctl", "-c", conf, *args],  # noqa: E731
                                       capture_output=True, text=True).stdout
    deadline = time.monotonic() + 20
    while ctl("status").count("RUNNING") < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    yield directory, conf, ctl
    ctl("shutdown")
    subprocess.run(["rm", "-rf", directory])


def status(ctl) -> dict[str, tuple[str, str]]:
    return {p[0]: (p[1], p[3] if len(p) > 3 else "") for p in (line.split() for line in ctl("status").splitlines())}


def drop(conf, *names) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", "-c", text("drop_programs.py"), str(conf), *names],
                          capture_output=True, text=True, timeout=60)


def test_the_system_supervisord_drops_only_our_programs_that_left_its_config(system_supervisord):
    directory, conf, ctl = system_supervisord
    before = status(ctl)
    assert set(before) == {"celery", "celerybeat", "other", "celery_own"}
    for name in ("my_proj-celeryd", "my_proj-celerybeat"):
        (directory / "conf.d" / f"{name}.conf").unlink()
    # a change of its own program, not applied by anyone yet: it stays unapplied
    (directory / "conf.d" / "other.conf").write_text("[program:other]\ncommand=sleep 1001\n")
    done = drop(conf, "celery", "celerybeat", "exports")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "dropped celery\ndropped celerybeat\n"
    assert status(ctl) == {"other": before["other"], "celery_own": before["celery_own"]}
    # again: nothing left to drop
    assert drop(conf, "celery", "celerybeat").stdout == ""


def test_a_program_of_ours_still_in_its_config_is_not_touched(system_supervisord):
    directory, conf, ctl = system_supervisord
    before = status(ctl)
    done = drop(conf, "celery", "celerybeat")
    assert (done.returncode, done.stdout) == (0, "")
    assert status(ctl) == before


def test_a_system_supervisord_that_does_not_run_has_nothing_to_drop(system_supervisord):
    directory, conf, ctl = system_supervisord
    ctl("shutdown")
    deadline = time.monotonic() + 20
    while (directory / "s.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    done = drop(conf, "celery")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_system_supervisord_without_a_socket_in_its_config_is_a_clear_failure(tmp_path):
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n")
    done = drop(conf, "celery", "celerybeat")
    assert done.returncode == 1
    assert done.stderr.startswith(f"the system's supervisord ({conf}): its config has no [unix_http_server] file=")
    assert "supervisorctl reread" in done.stderr and "Traceback" not in done.stderr
