"""Step decisions from probe facts: facts in, actions out, or why there is nothing to do."""

import pytest

from tasks.deploy import deploy_job, plan_deploy
from tasks.layout import Layout
from tasks.probe import PathState

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of


def steps(inventory, facts, host="prod"):
    return {p.name: p for p in plan_deploy(target_of(inventory, host), facts, PASSWORD)}


def summaries(plan):
    return [a.summary for a in plan.actions]


def test_fresh_host_gets_every_step(inventory):
    plans = steps(inventory, fresh_facts())
    assert all(p.changed for p in plans.values())
    system = summaries(plans["system"])
    assert system[0] == "install python3, python3-venv, logrotate, redis-server"
    assert "create user arches" in system and "create group arches" in system
    assert "create /var/log/celery/my_proj-worker.log" in system
    assert summaries(plans["python"]) == [
        "create virtualenv /opt/arches/venv",
        "pip install supervisor==4.3.0 celery[redis]==5.7.0",
    ]
    installed = [u.target for u in plans["configs"].actions[0].uploads]
    assert installed == [
        "/etc/supervisor/my_proj-supervisord.conf",
        "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf",
        "/etc/supervisor/my_proj-programs.d/my_proj-celerybeat.conf",
        "/etc/systemd/system/my_proj-supervisord.service",
        "/etc/logrotate.d/fabcelery-my_proj",
        "/opt/arches/my_proj/my_proj/settings_local.py",
    ]
    assert summaries(plans["supervisord"])[-1].startswith("start supervisord")


def test_second_deploy_changes_nothing(inventory):
    plans = steps(inventory, deployed_facts(inventory))
    changed = {name: summaries(p) for name, p in plans.items() if p.changed}
    assert changed == {}
    assert plans["verify"].noop == "celery, celerybeat RUNNING, nothing changed"


def test_changed_concurrency_replaces_one_file_and_updates_only_the_worker():
    before = make_inventory()
    after = make_inventory(celery__concurrency=4)
    plans = steps(after, deployed_facts(before))
    configs = plans["configs"]
    assert [u.target for a in configs.actions for u in a.uploads] == [CONF]
    assert configs.configs.changed_programs == ("celery",)
    assert summaries(plans["supervisord"]) == ["reread and update (celery)"]
    assert "restart" not in plans["supervisord"].actions[0].script
    for name in ("system", "broker", "python"):
        assert not plans[name].changed, name


def test_changed_main_config_restarts_supervisord():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    facts.checksums["/etc/supervisor/my_proj-supervisord.conf"] = "00" * 32     # the host has another one
    assert summaries(steps(inventory, facts)["supervisord"]) == ["restart supervisord (its own config changed)"]


def test_a_changed_unit_restarts_supervisord_after_daemon_reload():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    unit = "/etc/systemd/system/my_proj-supervisord.service"
    facts.contents[unit] = facts.contents[unit].replace("KillMode=process", "KillMode=mixed")
    facts.checksums[unit] = "00" * 32
    assert summaries(steps(inventory, facts)["supervisord"]) == ["systemctl daemon-reload",
                                                                 "restart supervisord (its own config changed)"]


def test_a_unit_whose_stop_timeout_alone_changed_needs_daemon_reload_and_no_restart_of_supervisord():
    before = make_inventory()
    after = make_inventory(celery__stopwaitsecs=30)   # the worker's stopwaitsecs and the unit's TimeoutStopSec
    plans = steps(after, deployed_facts(before))
    assert [u.target for a in plans["configs"].actions for u in a.uploads] == [
        "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf", "/etc/systemd/system/my_proj-supervisord.service"]
    assert summaries(plans["supervisord"]) == ["systemctl daemon-reload", "reread and update (celery)"]


def test_the_projects_own_celery_version_is_kept(inventory):
    facts = fresh_facts(venv_python=True, dists={"celery": "5.4.0", "kombu": "5.4.2"},
                        paths={**fresh_facts().paths,
                               "/opt/arches/venv": PathState("directory", "root", "root", "755")})
    python = steps(inventory, facts)["python"]
    assert summaries(python) == ["pip install supervisor==4.3.0 celery[redis]==5.4.0"]
    # pip runs as the virtualenv's owner, so it leaves no files of another user there
    assert "\nrunuser -u root -- env HOME=/root /opt/arches/venv/bin/pip install" in python.actions[0].script


def test_the_projects_requirements_file_pins_celery():
    inventory = make_inventory(project__requirements="requirements.txt")
    path = "/opt/arches/my_proj/requirements.txt"
    facts = fresh_facts(checksums={path: "ab" * 32},
                        contents={**fresh_facts().contents, path: "Django>=4.2\ncelery==5.6.3  # pinned\n"})
    python = steps(inventory, facts)["python"]
    assert summaries(python)[-1] == f"pip install -r {path} supervisor==4.3.0 celery[redis]"


def test_a_missing_requirements_file_stops_before_any_change():
    inventory = make_inventory(project__requirements="requirements.txt")
    plans = plan_deploy(target_of(inventory), fresh_facts(), PASSWORD)
    blocked = [p for p in plans if p.error]
    assert blocked and "requirements.txt (project.requirements) is not on the host" in blocked[0].error


def _link_at(path):
    def facts(inventory):
        found = deployed_facts(inventory)
        found.paths[path] = PathState("link", "root", "root", "777")
        return found
    return facts


# a step that cannot be planned, and the step it is: the deploy is that step's failure alone
# (tasks/apply.py runs nothing of a deploy with a failed plan)
REFUSALS = [
    ("a link in place of a log file", _link_at("/var/log/celery/my_proj-worker.log"), PASSWORD, "system"),
    ("no broker password", lambda inventory: fresh_facts(), None, "broker"),
    ("a link in place of a config file", _link_at("/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf"),
     PASSWORD, "configs"),
]


@pytest.mark.parametrize(("make_facts", "password", "step"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_the_first_step_that_cannot_be_planned_is_the_deploys_failure_alone(inventory, make_facts, password, step):
    plans = plan_deploy(target_of(inventory), make_facts(inventory), password)
    assert [(p.name, bool(p.error)) for p in plans] == [(step, True)]
    assert not plans[0].actions


def test_missing_requirements_file_is_the_python_steps_failure_alone():
    inventory = make_inventory(project__requirements="requirements.txt")
    plans = plan_deploy(target_of(inventory), fresh_facts(), PASSWORD)
    assert [p.name for p in plans] == ["python"]


def test_missing_project_code_stops_before_any_change(inventory):
    plans = plan_deploy(target_of(inventory), fresh_facts(paths={}), PASSWORD)
    assert len(plans) == 1 and plans[0].name == "preflight"
    assert "/opt/arches/my_proj/my_proj is not there" in plans[0].error


def test_not_debian_is_refused(inventory):
    plans = plan_deploy(target_of(inventory), fresh_facts(os={"id": "fedora", "pretty_name": "Fedora"}))
    assert plans[0].error.startswith("the host runs Fedora")


def test_ubuntu_is_accepted(inventory):
    plans = plan_deploy(target_of(inventory), fresh_facts(os={"id": "ubuntu", "id_like": "debian"}),
                        PASSWORD)
    assert not any(p.error for p in plans)


def test_log_owned_by_root_is_given_back_to_the_project_user(inventory):
    facts = deployed_facts(inventory)
    layout = Layout(inventory.project)
    facts.paths[layout.worker_log] = PathState("file", "root", "root", "644")
    system = steps(inventory, facts)["system"]
    assert summaries(system) == [
        f"fix owner/mode of {layout.worker_log} (root:root 644 -> arches:arches 640)"
    ]
    # through a descriptor opened without following a link (tasks/scripts/nofollow.py), by the system's Python
    script = system.actions[0].script
    assert script.startswith("/usr/bin/python3 -I -S -c ")
    assert script.endswith(" fix arches arches 640 file /var/log/celery/my_proj-worker.log")
    assert "chown arches" not in script and "chmod 640" not in script


def test_stopped_worker_is_started_by_deploy(inventory):
    facts = deployed_facts(inventory)
    object.__setattr__(facts, "supervisor_status",
                       "celery  STOPPED   Nov 27 01:00 AM\ncelerybeat  RUNNING   pid 5, uptime 0:01:00\n")
    plans = steps(inventory, facts)
    assert summaries(plans["supervisord"]) == ["start celery"]
    assert plans["verify"].changed


def test_supervisord_started_by_hand_is_handed_to_systemd(inventory):
    facts = deployed_facts(inventory)
    facts.services["my_proj-supervisord.service"] = {"enabled": "enabled", "active": "inactive"}
    plan = steps(inventory, facts)["supervisord"]
    assert summaries(plan) == ["supervisord runs outside systemd: stop it and start it under systemd"]


def test_without_systemd_supervisord_is_started_directly(inventory):
    facts = fresh_facts(systemd=False)
    plan = steps(inventory, facts)["supervisord"]
    # as the project user, never as root, with the directories for its socket and pid files
    assert plan.actions[-1].script == (
        "install -d -o arches -g arches -m 0750 /run/my_proj-supervisor /run/my_proj-celery &&\n"
        "runuser -u arches -- /opt/arches/venv/bin/supervisord -c /etc/supervisor/my_proj-supervisord.conf"
    )


def test_redis_stopped_is_started_and_checked(inventory):
    facts = deployed_facts(inventory)
    facts.services["redis-server.service"] = {"enabled": "enabled", "active": "inactive"}
    object.__setattr__(facts, "redis_ping", "Could not connect to Redis at 127.0.0.1:6379: Connection refused")
    broker = steps(inventory, facts)["broker"]
    assert broker.actions[0].script.startswith("set -e\nsystemctl start redis-server.service\n")
    assert "timeout 3 redis-cli --user my_proj ping" in broker.actions[0].script   # as the project's account


def test_worker_only_host_gets_no_beat_and_loses_an_old_beat_file():
    inventory = make_inventory(hosts={"mq": {"roles": ["broker"], "internal_address": "10.0.0.5"},
                                      "app1": {"roles": ["worker", "beat"]},
                                      "app2": {"roles": ["worker"]}})
    facts = fresh_facts(checksums={"/etc/supervisor/my_proj-programs.d/my_proj-celerybeat.conf": "cd" * 32})
    configs = steps(inventory, facts, host="app2")["configs"]
    targets = [u.target for a in configs.actions for u in a.uploads]
    assert "/etc/supervisor/my_proj-programs.d/my_proj-celerybeat.conf" not in targets
    assert "remove /etc/supervisor/my_proj-programs.d/my_proj-celerybeat.conf" in summaries(configs)


def test_a_failed_pip_install_fails_the_step_and_is_not_recorded(inventory, tmp_path):
    """pip and the record of what it installed are one `&&` chain: run with a pip that fails,
    the action exits non-zero and the record is not written (the next deploy runs pip again)."""
    import subprocess

    install = steps(inventory, fresh_facts())["python"].actions[-1].script
    record = Layout(inventory.project).python_stamp
    script = install.replace(record, str(tmp_path / "record"))
    pip_call = next(line for line in script.splitlines() if "/bin/pip" in line).removesuffix(" &&")
    done = subprocess.run(["sh", "-c", script.replace(pip_call, "false")], capture_output=True)
    assert done.returncode != 0 and not (tmp_path / "record").exists()
    done = subprocess.run(["sh", "-c", script.replace(pip_call, "true")], capture_output=True)
    assert done.returncode == 0 and (tmp_path / "record").exists()


# configs: an up-to-date file keeps its content; its owner and mode are the File resource's
CONF = "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf"
SETTINGS = "/opt/arches/my_proj/my_proj/settings_local.py"


@pytest.mark.parametrize("path,state,expected", [
    (CONF, PathState("file", "arches", "arches", "666"),
     [f"fix owner/mode of {CONF} (arches:arches 666 -> root:root 644)"]),
    (SETTINGS, PathState("file", "arches", "arches", "644"),
     [f"fix owner/mode of {SETTINGS} (arches:arches 644 -> arches:arches 640)"]),
    (CONF, PathState("file", "root", "root", "644"), []),
])
def test_a_config_file_whose_owner_or_mode_drifted_gets_them_back(inventory, path, state, expected):
    facts = deployed_facts(inventory)
    facts.paths[path] = state
    configs = steps(inventory, facts)["configs"]
    assert summaries(configs) == expected
    assert all(a.script.startswith("/usr/bin/python3 -I -S -c ") for a in configs.actions)   # never through a link


def test_a_link_in_place_of_an_up_to_date_config_file_is_refused_before_anything_changes(inventory):
    facts = deployed_facts(inventory)
    facts.paths[CONF] = PathState("link", "root", "root", "777")
    configs = steps(inventory, facts)["configs"]
    assert not configs.actions and configs.error.startswith(f"{CONF} is a symbolic link")


@pytest.mark.parametrize("facts", [fresh_facts(), deployed_facts()], ids=["fresh", "deployed"])
def test_the_deploy_job_plans_its_steps_in_the_order_it_names_them(inventory, facts):
    """deploy_job's `steps` (what Ctrl-C at the probe says was not started) are plan_deploy's."""
    target = target_of(inventory)
    job = deploy_job(target)
    assert job.name == "deploy"
    assert [p.name for p in job.plan(facts, {"password": PASSWORD})] == list(job.steps)
    assert set(job.spec(False).contents) < set(job.spec(True).contents)    # a dry run reads the files for its diffs
