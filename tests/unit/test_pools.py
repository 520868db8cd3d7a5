"""Worker pools: the inventory's celery.pools, placed per host, each its own supervisor program
with its queues and tuning. The table of programs, its files, the validation, and what a
deploy does when a pool is added, changed or taken off a host."""

from __future__ import annotations

import copy
import json
import os
import pwd
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.configs import config_files, plan_configs, template_context
from tasks.deploy import plan_deploy, probe_spec
from tasks.inventory import InventoryError
from tasks.inventory_load import parse_inventory
from tasks.layout import Layout
from tasks.operations import logs_operation, ping_operation, restart_operation, start_operation, stop_operation
from tasks.probe import Facts
from tasks.scripts import text
from tasks.status import host_status, status_document, status_table
from tasks.supervisor import verify_script
from tasks.target import Target

from .conftest import BASE, deployed_facts, fresh_facts, target_of
from .test_operations import FakeHost

GOLDEN = Path(__file__).resolve().parent / "golden"
EXPORTS = {"queues": ["exports", "bulk"], "concurrency": 1, "pool": "prefork", "max_tasks_per_child": 100,
           "max_memory_per_child": 512000, "prefetch_multiplier": 1, "time_limit": 3600, "soft_time_limit": 3300,
           "stopwaitsecs": 3600, "environment": {"EXPORT_DIR": "/srv/exports"}}
POOLS = {"celery": {"queues": ["celery"], "concurrency": 4}, "exports": EXPORTS}
FLEET = {"app1": {"roles": ["broker", "worker", "beat"], "internal_address": "10.0.0.5",
                  "pools": ["celery", "exports"]},
         "app2": {"roles": ["worker"], "pools": ["exports"]}}
CONFD = "/etc/supervisor/my_proj-programs.d"
PASSWORD = "s3cret"       # the fleet's broker password (workers on app2 reach Redis on app1)


def inventory(pools=None, hosts=None, **celery):
    data = copy.deepcopy(BASE)
    data["celery"].update(celery)
    if pools is not None:
        data["celery"]["pools"] = pools
    if hosts is not None:
        data["hosts"] = hosts
    return parse_inventory(data, Path("inventory.yaml"))


def problem(pools=None, hosts=None, **celery) -> str:
    with pytest.raises(InventoryError) as caught:
        inventory(pools, hosts, **celery)
    return str(caught.value)


def rendered(inv, host: str, celery: str | None = None) -> dict[str, str]:
    """The files a deploy writes to `host`; with `celery`, the Celery its virtualenv has (else
    fabcelery's own pin, 5.5 or later: the workers hand their running tasks back, tasks/shutdown.py)."""
    spec = inv.hosts[host]
    facts = fresh_facts(hostname=host, dists={"celery": celery} if celery else {})
    target = Target.of(inv, spec)
    context = template_context(target, facts, "/home/arches", "redis://localhost:6379/0", "redis-server.service")
    plan = plan_configs(target, facts, context)
    return {Path(u.target).name: u.content for a in plan.actions for u in a.uploads}


def line(text: str, prefix: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(prefix))


# --- the program files ------------------------------------------------------------------


def test_every_pool_option_reaches_the_workers_command_line():
    conf = rendered(inventory(POOLS, FLEET), "app1")["my_proj-celeryd-exports.conf"]
    assert "[program:exports]\n" in conf
    assert line(conf, "command=") == (
        "command=/opt/arches/venv/bin/celery -A my_proj.celery worker --loglevel=INFO --queues=exports,bulk "
        "--concurrency=1 --pool=prefork --max-tasks-per-child=100 --max-memory-per-child=512000 "
        "--prefetch-multiplier=1 --time-limit=3600 --soft-time-limit=3300 --hostname=exports@app1")
    # the warm shutdown's 3600 s, and 30 s for the cold one that hands the tasks back (Celery 5.7)
    assert line(conf, "stopwaitsecs=") == "stopwaitsecs=3630"
    assert line(conf, "stdout_logfile=") == "stdout_logfile=/var/log/celery/my_proj-worker-exports.log"
    assert line(conf, "environment=") == ('environment=HOME="/home/arches",USER="arches",PYTHONUNBUFFERED="1",'
                                         'FABCELERY_HANDBACK_AFTER="3600",EXPORT_DIR="/srv/exports"')
    assert "; Pool exports: consumes exports, bulk, and nothing else.\n" in conf
    assert line(conf, "stopasgroup=") == "stopasgroup=false"          # warm shutdown, as for the default pool


def test_the_pool_named_celery_keeps_its_names_and_gets_its_queues_and_concurrency():
    files = rendered(inventory(POOLS, FLEET), "app1")
    conf = files["my_proj-celeryd.conf"]
    assert "[program:celery]\n" in conf
    assert line(conf, "command=").endswith("worker --loglevel=INFO --queues=celery --concurrency=4 "
                                           "--hostname=celery@app1")
    assert line(conf, "stdout_logfile=") == "stdout_logfile=/var/log/celery/my_proj-worker.log"
    assert set(files) == {"my_proj-supervisord.conf", "my_proj-celeryd.conf", "my_proj-celeryd-exports.conf",
                          "my_proj-celerybeat.conf", "my_proj-supervisord.service", "fabcelery-my_proj",
                          "settings_local.py"}


@pytest.mark.parametrize("pool,options", [
    ({"autoscale": [8, 2]}, "--queues=p --autoscale=8,2"),
    ({"pool": "threads", "concurrency": 16}, "--queues=p --concurrency=16 --pool=threads"),
    ({"pool": "solo"}, "--queues=p --pool=solo"),
    ({"prefetch_multiplier": 0, "loglevel": "warning"}, "--queues=p --concurrency=2 --prefetch-multiplier=0"),
    ({"soft_time_limit": 60}, "--queues=p --concurrency=2 --soft-time-limit=60"),
])
def test_pool_options_render_as_celery_wants_them(pool, options):
    conf = rendered(inventory({"p": pool}), "prod")["my_proj-celeryd-p.conf"]
    level = pool.get("loglevel", "INFO").upper()
    assert line(conf, "command=") == (f"command=/opt/arches/venv/bin/celery -A my_proj.celery worker "
                                      f"--loglevel={level} {options} --hostname=p@prod")


def test_a_percent_sign_in_an_environment_value_reaches_the_program_as_it_is():
    conf = rendered(inventory({"p": {"environment": {"RATE": "50%", "LIST": "a,b c"}}}), "prod")[
        "my_proj-celeryd-p.conf"]
    # supervisor expands %(...)s in environment=: a plain % is written %%
    assert line(conf, "environment=").endswith(',RATE="50%%",LIST="a,b c"')


def test_a_pool_file_loads_with_supervisors_own_parser_and_keeps_the_environment(tmp_path):
    import configparser

    from supervisor.datatypes import dict_of_key_value_pairs

    inv = inventory({"p": {"environment": {"RATE": "50%", "LIST": "a,b c", "EMPTY": ""}}})
    conf = rendered(inv, "prod")["my_proj-celeryd-p.conf"]
    (tmp_path / "celery").mkdir()
    # the parser checks that the user and the log's directory exist: this machine's
    conf = conf.replace("/var/log/", f"{tmp_path}/").replace("user=arches", f"user={pwd.getpwuid(os.getuid())[0]}")
    path = tmp_path / "p.conf"
    path.write_text(conf)
    done = subprocess.run([sys.executable, "-c", text("validate_supervisor.py"), f"programs:{path}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    parser = configparser.RawConfigParser()
    parser.read_string(conf)
    environment = dict_of_key_value_pairs(parser.get("program:p", "environment").replace("%%", "%"))
    assert environment == {"HOME": "/home/arches", "USER": "arches", "PYTHONUNBUFFERED": "1",
                           "FABCELERY_HANDBACK_AFTER": "600", "RATE": "50%", "LIST": "a,b c", "EMPTY": ""}


def test_an_inventory_without_pools_renders_byte_for_byte_what_it_did_before_pools():
    """With a Celery older than 5.5 (Arches' 5.3.6); a later one adds only the hand-back."""
    files = rendered(inventory(), "prod", celery="5.3.6")
    for golden in GOLDEN.iterdir():
        assert files[golden.name] == golden.read_text(), golden.name
    later = rendered(inventory(), "prod", celery="5.6.3")
    assert later["my_proj-celerybeat.conf"] == files["my_proj-celerybeat.conf"]
    assert later["my_proj-supervisord.conf"] == files["my_proj-supervisord.conf"]
    assert changed_lines(files["my_proj-supervisord.service"], later["my_proj-supervisord.service"]) == (
        ["TimeoutStopSec=660"], ["TimeoutStopSec=690"])
    old, new = changed_lines(files["my_proj-celeryd.conf"], later["my_proj-celeryd.conf"])
    settings = lambda lines: [x for x in lines if not x.startswith(";")]  # noqa: E731
    assert settings(old) == [line(files["my_proj-celeryd.conf"], "environment="), "stopwaitsecs=600"]
    assert settings(new) == [line(files["my_proj-celeryd.conf"], "environment=") + ',FABCELERY_HANDBACK_AFTER="600"',
                             "stopwaitsecs=630"]


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    a, b = old.splitlines(), new.splitlines()
    return [x for x in a if x not in b], [x for x in b if x not in a]


def test_the_unit_waits_for_every_pool_to_stop_one_after_another():
    unit = rendered(inventory(POOLS, FLEET), "app1")["my_proj-supervisord.service"]
    # 600 + 30 + 3600 + 30 + 60: each worker's warm shutdown, and its cold one that hands tasks back
    assert line(unit, "TimeoutStopSec=") == "TimeoutStopSec=4320"
    assert line(rendered(inventory(POOLS, FLEET), "app2")["my_proj-supervisord.service"],
                "TimeoutStopSec=") == "TimeoutStopSec=3690"
    # Celery 5.3.6 kills what still runs after the warm shutdown: no cold shutdown to wait for
    assert line(rendered(inventory(POOLS, FLEET), "app1", celery="5.3.6")["my_proj-supervisord.service"],
                "TimeoutStopSec=") == "TimeoutStopSec=4260"        # 600 + 3600 + 60
    # at least celery.stopwaitsecs (600 here): a host whose pools all stop sooner waits for that
    quick = {"celery": {"queues": ["celery"]}, "quick": {"queues": ["quick"], "stopwaitsecs": 30}}
    hosts = {**FLEET, "app1": {**FLEET["app1"], "pools": ["celery", "quick"]}, "app2": {"roles": ["worker"],
                                                                                        "pools": ["quick"]}}
    assert line(rendered(inventory(quick, hosts), "app1")["my_proj-supervisord.service"],
                "TimeoutStopSec=") == "TimeoutStopSec=750"           # 600 + 30 + 30 + 30 + 60
    assert line(rendered(inventory(quick, hosts), "app2")["my_proj-supervisord.service"],
                "TimeoutStopSec=") == "TimeoutStopSec=660"           # 600 + 60, not 30 + 30 + 60


# --- the table of programs ----------------------------------------------------------------


def table(inv, host):
    return [(p.name, p.config, p.log, p.node(host) if p.is_worker else None, p.queues, p.stopwaitsecs)
            for p in target_of(inv, host).programs]


def test_the_table_of_programs_per_host():
    inv = inventory(POOLS, FLEET)
    assert table(inv, "app1") == [
        ("celery", f"{CONFD}/my_proj-celeryd.conf", "/var/log/celery/my_proj-worker.log", "celery@app1",
         ("celery",), 600),
        ("exports", f"{CONFD}/my_proj-celeryd-exports.conf", "/var/log/celery/my_proj-worker-exports.log",
         "exports@app1", ("exports", "bulk"), 3600),
        ("celerybeat", f"{CONFD}/my_proj-celerybeat.conf", "/var/log/celery/my_proj-beat.log", None, (), 60),
    ]
    assert table(inv, "app2") == [
        ("exports", f"{CONFD}/my_proj-celeryd-exports.conf", "/var/log/celery/my_proj-worker-exports.log",
         "exports@app2", ("exports", "bulk"), 3600)]
    assert [p.name for p in target_of(inv, "app1").pool_programs("exports")] == ["exports"]
    assert target_of(inv, "app2").pool_programs("celery") == []


def test_without_pools_one_pool_named_celery_on_the_default_queue():
    inv = inventory(concurrency=3, stopwaitsecs=900, loglevel="debug")
    (worker, beat) = target_of(inv).programs
    assert (worker.name, worker.config, worker.log, worker.node("prod")) == (
        "celery", f"{CONFD}/my_proj-celeryd.conf", "/var/log/celery/my_proj-worker.log", "celery@prod")
    assert worker.worker_options == ("--concurrency=3",)                  # no -Q: the project's default queue
    assert (worker.stopwaitsecs, worker.pool.loglevel, beat.name) == (900, "DEBUG", "celerybeat")


def test_a_host_without_pools_runs_every_pool():
    inv = inventory(POOLS)
    assert [p.name for p in target_of(inv).programs] == ["celery", "exports", "celerybeat"]


def test_pools_inherit_the_celery_defaults():
    inv = inventory({"a": {}, "b": {"concurrency": 5}}, concurrency=3, stopwaitsecs=120, loglevel="warning")
    a, b = inv.celery.pools["a"], inv.celery.pools["b"]
    assert (a.queues, a.concurrency, a.stopwaitsecs, a.loglevel) == (("a",), 3, 120, "WARNING")
    assert (b.concurrency, b.stopwaitsecs) == (5, 120)


def test_the_order_of_a_hosts_pools_does_not_matter():
    a = inventory(POOLS, {**FLEET, "app1": {**FLEET["app1"], "pools": ["exports", "celery"]}})
    assert [p.name for p in target_of(a, "app1").programs] == ["celery", "exports", "celerybeat"]


def test_every_program_log_exists_beforehand_and_is_rotated():
    inv = inventory(POOLS, FLEET)
    files = rendered(inv, "app1")
    rotated = [x for x in files["fabcelery-my_proj"].split("{")[0].splitlines() if x.startswith("/")]
    assert rotated == ["/var/log/supervisor/my_proj-supervisord.log", "/var/log/celery/my_proj-worker.log",
                       "/var/log/celery/my_proj-worker-exports.log", "/var/log/celery/my_proj-beat.log"]
    system = {p.name: p for p in plan_deploy(target_of(inv, "app2"), fresh_facts(hostname="app2"),
                                             PASSWORD)}["system"]
    assert "create /var/log/celery/my_proj-worker-exports.log" in [a.summary for a in system.actions]
    assert "create /var/log/celery/my_proj-worker.log" not in [a.summary for a in system.actions]


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("pools,hosts,said", [
    ({"exports": {"queue": ["x"]}}, None, "'celery.pools.exports.queue' is not a known key; did you mean 'queues'?"),
    ({"ex-ports": {}}, None, "'celery.pools.ex-ports' is not a usable pool name: a plain identifier"),
    ({"exports; reboot": {}}, None, "'celery.pools.exports; reboot' is not a usable pool name"),
    ({"celerybeat": {}}, None, "'celery.pools.celerybeat' is not a usable pool name: celerybeat is the beat "
                               "program's name"),
    ({"e": {"concurrency": 2, "autoscale": [4, 1]}}, None, "'celery.pools.e' sets both concurrency and autoscale"),
    ({"e": {"autoscale": [1, 4]}}, None, "'celery.pools.e.autoscale' must be [max, min] processes"),
    ({"e": {"time_limit": 60, "soft_time_limit": 60, "stopwaitsecs": 60}}, None,
     "'celery.pools.e.soft_time_limit' (60) must be shorter than time_limit (60)"),
    ({"e": {"time_limit": 3600}}, None, "'celery.pools.e.stopwaitsecs' (600) is shorter than time_limit (3600)"),
    ({"e": {"pool": "gevent"}}, None, "'celery.pools.e.pool' must be one of prefork, threads, solo; got 'gevent'"),
    ({"e": {"pool": "threads", "max_tasks_per_child": 10}}, None,
     "'celery.pools.e.max_tasks_per_child' works with the prefork pool only, not threads"),
    ({"e": {"pool": "solo", "concurrency": 4}}, None, "'celery.pools.e.concurrency' cannot be set for a solo pool"),
    ({"e": {"queues": []}}, None, "'celery.pools.e.queues' must be a non-empty list of queue names"),
    ({"e": {"queues": ["a b"]}}, None, "'celery.pools.e.queues' must be a non-empty list of queue names"),
    ({"e": {"environment": {"DIR": "/srv\n[program:evil]"}}}, None,
     "'celery.pools.e.environment.DIR' must not hold quotes, line breaks or other control characters"),
    ({"e": {"environment": {"DIR": '/srv",X="1'}}}, None, "'celery.pools.e.environment.DIR' must not hold quotes"),
    ({"e": {"environment": {"DIR": "it's"}}}, None, "'celery.pools.e.environment.DIR' must not hold quotes"),
    ({"e": {"environment": {"HOME": "/srv"}}}, None, "'celery.pools.e.environment.HOME' is set by fabcelery"),
    ({"e": {"environment": {"A-B": "1"}}}, None, "'celery.pools.e.environment.A-B' is not a usable variable name"),
    ({}, None, "'celery.pools' must map pool names to their settings"),
    (POOLS, {**FLEET, "app2": {"roles": ["worker"], "pools": ["exprots"]}},
     "'hosts.app2.pools' names the pool 'exprots', which 'celery.pools' does not define (pools: celery, exports)"),
    (POOLS, {**FLEET, "mq": {"roles": ["broker"], "pools": ["exports"]}},
     "'hosts.mq.pools' is set, but the host has no worker role"),
    ({**POOLS, "bulk": {"queues": ["bulk2"]}}, FLEET,
     "'celery.pools.bulk' runs on no host (no worker host lists it in 'pools'), and no other pool consumes its "
     "queue bulk2: tasks sent there would wait forever"),
])
def test_bad_pools_are_named_with_the_file_and_key(pools, hosts, said):
    message = problem(pools, hosts)
    assert message.startswith("inventory.yaml: ") and said in message, message
    assert message.endswith("nothing was changed.") and "\n" not in message


def test_a_pool_placed_nowhere_is_fine_when_another_pool_consumes_its_queues():
    inv = inventory({**POOLS, "spare": {"queues": ["exports"]}}, FLEET)
    assert "spare" in inv.celery.pools


# --- what a deploy does -----------------------------------------------------------------------


def plans(after, facts, host="app1"):
    return {p.name: p for p in plan_deploy(target_of(after, host), facts, PASSWORD)}


def summaries(plan):
    return [a.summary for a in plan.actions]


def uploaded(plan):
    return [u.target for a in plan.actions for u in a.uploads]


def placed(app1, app2=("exports",), pools=POOLS):
    return inventory(pools, {"app1": {**FLEET["app1"], "pools": list(app1)},
                             "app2": {"roles": ["worker"], "pools": list(app2)}})


def test_a_second_deploy_of_a_host_with_pools_changes_nothing():
    inv = placed(["celery", "exports"])
    for host in ("app1", "app2"):
        steps = plans(inv, deployed_facts(inv, host, PASSWORD), host)
        assert {n: summaries(p) for n, p in steps.items() if p.changed} == {}, host
    assert plans(inv, deployed_facts(inv, "app1", PASSWORD))["verify"].noop == \
        "celery, exports, celerybeat RUNNING, nothing changed"


def test_a_pool_added_to_a_host_is_added_alone():
    before, after = placed(["celery"], ["exports", "celery"]), placed(["celery", "exports"], ["exports", "celery"])
    steps = plans(after, deployed_facts(before, "app1", PASSWORD))
    # its file, and the unit and rotation file that list it
    assert uploaded(steps["configs"]) == [f"{CONFD}/my_proj-celeryd-exports.conf",
                                          "/etc/systemd/system/my_proj-supervisord.service",
                                          "/etc/logrotate.d/fabcelery-my_proj"]
    # the unit's TimeoutStopSec grows with the pool's stopwaitsecs: daemon-reload, no restart of supervisord
    assert summaries(steps["supervisord"]) == ["systemctl daemon-reload", "reread and update (add exports)"]
    assert summaries(steps["system"]) == ["create /var/log/celery/my_proj-worker-exports.log"]
    assert steps["verify"].changed


def test_a_changed_pool_restarts_that_program_only():
    before = placed(["celery", "exports"])
    after = placed(["celery", "exports"], pools={**POOLS, "exports": {**EXPORTS, "concurrency": 2}})
    for host in ("app1", "app2"):
        steps = plans(after, deployed_facts(before, host, PASSWORD), host)
        assert uploaded(steps["configs"]) == [f"{CONFD}/my_proj-celeryd-exports.conf"], host
        assert summaries(steps["supervisord"]) == ["reread and update (exports)"], host
        assert not steps["system"].changed and not steps["python"].changed


def test_a_pool_taken_off_a_host_is_stopped_and_removed_there_only():
    before, after = placed(["celery", "exports"]), placed(["celery"])
    steps = plans(after, deployed_facts(before, "app1", PASSWORD))
    assert summaries(steps["configs"])[-1] == f"remove {CONFD}/my_proj-celeryd-exports.conf"
    assert uploaded(steps["configs"]) == ["/etc/systemd/system/my_proj-supervisord.service",
                                          "/etc/logrotate.d/fabcelery-my_proj"]      # shorter TimeoutStopSec
    assert summaries(steps["supervisord"]) == ["systemctl daemon-reload",
                                               "reread and update (stop and remove exports)"]
    # update stops a removed program with its stopsignal and stopwaitsecs (warm), then removes it
    assert steps["supervisord"].actions[1].script.endswith("/etc/supervisor/my_proj-supervisord.conf update")
    # and app2 is untouched
    other = plans(after, deployed_facts(before, "app2", PASSWORD), "app2")
    assert {n: summaries(p) for n, p in other.items() if p.changed} == {}


def test_a_pool_the_inventory_no_longer_names_is_found_on_the_host_and_removed():
    before = placed(["celery", "exports"])
    after = inventory({"celery": POOLS["celery"]}, {"app1": {**FLEET["app1"], "pools": ["celery"]},
                                                    "app2": {"roles": ["worker"], "pools": ["celery"]}})
    facts = deployed_facts(before, "app2", PASSWORD)
    assert facts.listings[Layout(before.project).pool_conf_glob] == (f"{CONFD}/my_proj-celeryd-exports.conf",)
    steps = plans(after, facts, "app2")
    assert f"remove {CONFD}/my_proj-celeryd-exports.conf" in summaries(steps["configs"])
    assert summaries(steps["supervisord"])[-1] == "reread and update (add celery, stop and remove exports)"


def test_the_probe_lists_the_pool_files_of_the_project():
    inv = placed(["celery", "exports"])
    spec = probe_spec(target_of(inv, "app1"))
    # and what an earlier fabcelery left in conf.d, which Debian's supervisord includes too
    assert spec.listings == ((CONFD, "my_proj-celeryd-*.conf"), ("/etc/supervisor/conf.d", "my_proj-celery*.conf"))
    assert f"{CONFD}/my_proj-celeryd-exports.conf" in spec.checksums
    assert "/etc/systemd/system/my_proj-supervisord.service" in spec.contents


def test_a_settings_change_restarts_every_pool():
    inv = placed(["celery", "exports"])
    facts = deployed_facts(inv, "app1", PASSWORD)
    facts.contents[Layout(inv.project).settings_local] = "SECRET_KEY = 'x'\n"
    assert summaries(plans(inv, facts)["supervisord"]) == [
        "restart celery, exports, celerybeat (settings_local.py changed)"]


def test_a_stopped_pool_is_started_by_deploy():
    inv = placed(["celery", "exports"])
    facts = deployed_facts(inv, "app1", PASSWORD)
    object.__setattr__(facts, "supervisor_status", facts.supervisor_status.replace(
        "exports                          RUNNING   pid 102, uptime 0:10:00", "exports    STOPPED   Not started"))
    assert summaries(plans(inv, facts)["supervisord"]) == ["start exports"]


def test_verify_waits_for_every_pool_and_checks_the_queues_each_consumes():
    inv = placed(["celery", "exports"])
    facts = replace(deployed_facts(inv, "app1", PASSWORD), hostname="app1")
    facts.checksums[f"{CONFD}/my_proj-celeryd-exports.conf"] = "00" * 32
    verify = plans(inv, facts)["verify"]
    assert summaries(verify) == ["wait for celery, exports, celerybeat to run and the workers celery, exports to "
                                 "answer with their queues"]
    script = verify.actions[0].script
    assert "inspect active_queues -d celery@app1,exports@app1 --json --timeout 2" in script
    assert "celery@app1=celery exports@app1=exports,bulk" in script
    default = inventory()
    assert "'celery@prod=*'" in verify_script(target_of(default), "/home/arches", "prod", 120)


# --- the queue check, run as root by the system's Python -------------------------------------

def check_queues(stdin: str, *expected: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", "-c", text("check_queues.py"), *expected], input=stdin,
                          capture_output=True, text=True)


def reply(**nodes) -> str:
    return json.dumps({n.replace("_at_", "@"): [{"name": q} for q in qs] for n, qs in nodes.items()})


@pytest.mark.parametrize("answer,expected,ok,said", [
    (reply(celery_at_h=["celery"], exports_at_h=["bulk", "exports"]), ("celery@h=celery", "exports@h=exports,bulk"),
     True, ""),
    ("/usr/lib/python3/dist-packages/x.py: SomeWarning\n" + reply(celery_at_h=["x", "y"]), ("celery@h=*",), True, ""),
    (reply(celery_at_h=["celery"]), ("celery@h=celery", "exports@h=exports"), False, "exports@h: no answer"),
    (reply(exports_at_h=["exports", "celery"]), ("exports@h=exports",), False,
     "exports@h: consumes celery, exports, not exports"),
    ("Error: No nodes replied within time constraint", ("celery@h=*",), False, "celery@h: no answer"),
])
def test_the_queue_check_wants_every_node_with_exactly_its_queues(answer, expected, ok, said):
    done = check_queues(answer, *expected)
    assert (done.returncode == 0) is ok
    assert said in done.stdout


# --- day two, per pool -----------------------------------------------------------------------


@pytest.fixture
def pooled(tmp_path, monkeypatch):
    fake = FakeHost(tmp_path, monkeypatch, programs=("celery", "exports", "celerybeat"))
    inv = inventory(POOLS, {"prod": {"roles": ["broker", "worker", "beat"], "pools": ["celery", "exports"]}})
    fake.inventory = replace(inv, project=replace(inv.project, virtualenv=str(tmp_path / "venv")))
    fake.host = fake.inventory.hosts["prod"]
    monkeypatch.setattr(Layout, "pool_log", lambda self, pool: str(tmp_path / f"{pool}.log"))
    (tmp_path / "exports.log").write_text("".join(f"exports line {i}\n" for i in range(1, 11)))
    fake.write_program_files()
    return fake


def test_restart_of_one_pool_restarts_only_that_program(pooled):
    outcome = pooled.run(restart_operation(pooled.target, "exports"))
    assert not outcome.failed, outcome.lines
    assert (outcome.before, outcome.after) == ({"exports": 101}, {"exports": 501})
    assert {n: p["pid"] for n, p in pooled.programs().items()} == {"celery": 100, "exports": 501, "celerybeat": 102}
    assert outcome.lines[0] == "restarted exports pid 101 -> 501; exports@web-01.example answers ping"


def test_restart_of_every_program_pings_every_pool_by_name(pooled):
    outcome = pooled.run(restart_operation(pooled.target))
    assert not outcome.failed, outcome.lines
    assert (pooled.dir / "node").read_text().strip() == "celery@web-01.example,exports@web-01.example"
    assert outcome.lines[0].endswith("; celery@web-01.example, exports@web-01.example answer ping")


def test_a_pool_that_does_not_answer_fails_the_restart_by_name(pooled, monkeypatch):
    from tasks import operations

    monkeypatch.setattr(operations, "READY_TIMEOUT", 1)
    (pooled.dir / "deaf-nodes").write_text("exports@web-01.example\n")
    outcome = pooled.run(restart_operation(pooled.target))
    assert outcome.failed.startswith("the worker exports does not answer celery inspect ping"), outcome.failed


def test_stop_and_start_of_one_pool(pooled):
    stopped = pooled.run(stop_operation(pooled.target, "exports"))
    assert stopped.lines == ["stopped exports"]
    assert {n: p["state"] for n, p in pooled.programs().items()} == {
        "celery": "RUNNING", "exports": "STOPPED", "celerybeat": "RUNNING"}
    started = pooled.run(start_operation(pooled.target, "exports"))
    assert started.changed and started.lines[0].startswith("started exports: exports pid 501")


def test_ping_names_every_pool_and_one_with_pool(pooled):
    assert pooled.run(ping_operation(pooled.target)).lines == [
        "celery@web-01.example answers: pong", "exports@web-01.example answers: pong"]
    assert pooled.run(ping_operation(pooled.target, "exports")).lines == [
        "exports@web-01.example answers: pong"]
    (pooled.dir / "deaf-nodes").write_text("exports@web-01.example\n")
    outcome = pooled.run(ping_operation(pooled.target))
    assert outcome.failed.startswith("exports@web-01.example does not answer")


def test_logs_of_one_pool(pooled):
    assert pooled.run(logs_operation(pooled.target, 2, "exports")).lines == [
        f"==> {pooled.dir / 'exports.log'} <==", "exports line 9", "exports line 10"]


def test_a_host_without_the_pool_is_passed_over():
    inv = placed(["celery", "exports"], ["exports"])
    for build in (restart_operation, start_operation, stop_operation, ping_operation):
        op = build(target_of(inv, "app2"), "celery")
        assert op.script == "" and op.skip == "the pool celery does not run on this host", build
    assert logs_operation(target_of(inv, "app2"), 5, "celery").skip.startswith("the pool celery does not run")


def test_status_has_a_row_per_program_with_the_pools_queues():
    inv = placed(["celery", "exports"])
    status = host_status(target_of(inv, "app1"), deployed_facts(inv, "app1", PASSWORD))
    assert [(r.name, r.state, r.queues) for r in status.programs] == [
        ("celery", "RUNNING", ("celery",)), ("exports", "RUNNING", ("exports", "bulk")), ("celerybeat", "RUNNING", ())]
    rows = [x.split() for x in status_table([status]).splitlines()[1:]]
    assert rows[1] == ["app1", "exports", "RUNNING", "102", "0:10:00", "queues:", "exports,", "bulk"]
    assert rows[2] == ["app1", "celerybeat", "RUNNING", "103", "0:10:00"]
    document = status_document([status])
    assert [(p["name"], p["queues"]) for p in document["hosts"][0]["programs"]] == [
        ("celery", ["celery"]), ("exports", ["exports", "bulk"]), ("celerybeat", None)]


def test_status_names_a_pool_that_supervisord_does_not_know():
    inv = placed(["celery", "exports"])
    facts = Facts(supervisor_status="celery                           RUNNING   pid 101, uptime 0:10:00\n"
                                    "celerybeat                       RUNNING   pid 103, uptime 0:10:00\n")
    status = host_status(target_of(inv, "app1"), facts)
    assert not status.ok
    assert [(r.name, r.state) for r in status.programs] == [("celery", "RUNNING"), ("exports", "MISSING"),
                                                            ("celerybeat", "RUNNING")]


def test_config_files_follow_the_table():
    inv = placed(["celery", "exports"])
    files = [f.target for f in config_files(target_of(inv, "app2"))]
    assert f"{CONFD}/my_proj-celeryd-exports.conf" in files and f"{CONFD}/my_proj-celeryd.conf" not in files


@pytest.mark.parametrize("task", ["restart-celery", "start-celery", "stop-celery", "ping", "logs"])
def test_an_unknown_pool_on_the_command_line_is_one_line_and_exit_2(tmp_path, task):
    from .test_safety_cli import GOOD, fab

    done = fab(tmp_path, GOOD, task, "--pool", "exprots")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"--pool exprots: {tmp_path}/inventory.yaml has no such pool (pools: celery)"


# --- a host whose programs all move elsewhere (its worker and beat roles taken off) ----------

BROKER_ONLY = {"app1": {"roles": ["broker"], "internal_address": "10.0.0.5"},
               "app2": {"roles": ["worker", "beat"], "pools": ["celery", "exports"]}}


def test_a_host_whose_worker_and_beat_roles_are_taken_off_stops_its_supervisord_and_loses_its_program_files():
    before, after = placed(["celery", "exports"]), inventory(POOLS, BROKER_ONLY)
    steps = plans(after, deployed_facts(before, "app1", PASSWORD))
    assert summaries(steps["configs"]) == [
        "stop and remove my_proj-supervisord.service",
        "remove /etc/supervisor/my_proj-supervisord.conf",
        "remove /etc/logrotate.d/fabcelery-my_proj",
        f"remove {CONFD}/my_proj-celeryd.conf",
        f"remove {CONFD}/my_proj-celeryd-exports.conf",
        f"remove {CONFD}/my_proj-celerybeat.conf",
    ]
    # the unit goes before its files: its stop is supervisord's warm shutdown of every program
    assert "systemctl disable --now --quiet my_proj-supervisord.service" in steps["configs"].actions[0].script
    assert not steps["supervisord"].changed and not steps["python"].changed
    # the broker stays as it is
    assert not steps["broker"].changed


def retired(facts: Facts, inv) -> Facts:
    """`facts` once the retirement above has run: no unit, no supervisor or program file."""
    layout = Layout(inv.project)
    gone = {layout.unit_file, layout.supervisord_conf, layout.logrotate_conf,
            *(f.target for host in ("app1", "app2") for f in config_files(target_of(inv, host)))}
    return replace(facts, paths={p: s for p, s in facts.paths.items() if p not in gone},
                   services={n: s for n, s in facts.services.items() if n != layout.unit_name},
                   listings={}, supervisord_running=False, supervisor_status=None)


@pytest.mark.parametrize("facts", [
    lambda before: fresh_facts(),                                                  # never ran programs
    lambda before: retired(deployed_facts(before, "app1", PASSWORD), before),      # retired by a deploy
], ids=["never-ran-programs", "retired-already"])
def test_a_host_without_programs_that_has_none_left_keeps_its_configs_step_a_noop(facts):
    before, after = placed(["celery", "exports"]), inventory(POOLS, BROKER_ONLY)
    configs = plans(after, facts(before))["configs"]
    assert not configs.changed and configs.noop == "no celery programs on this host"


def test_the_probe_of_a_host_without_programs_asks_for_what_an_earlier_deploy_may_have_left():
    after = inventory(POOLS, BROKER_ONLY)
    spec = probe_spec(target_of(after, "app1"))
    assert "my_proj-supervisord.service" in spec.services
    assert (CONFD, "my_proj-celeryd-*.conf") in spec.listings
    assert {"/etc/systemd/system/my_proj-supervisord.service", "/etc/supervisor/my_proj-supervisord.conf",
            f"{CONFD}/my_proj-celerybeat.conf"} <= set(spec.paths)
