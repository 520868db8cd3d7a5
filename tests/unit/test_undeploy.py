"""`fab undeploy`'s decisions: what goes from a deployed host, in which order, what stays
(other projects' shares, the project's code and user), and nothing from a clean host."""

from __future__ import annotations

import subprocess
from dataclasses import replace

from tasks.layout import Layout
from tasks.probe import Facts, PathState, ProbeSpec, parse_probe, probe_script
from tasks.rabbitmq_broker import RABBITMQ_FRAGMENT, rabbitmq_stamp_file
from tasks.redis_broker import REDIS_CONF, REDIS_DEFAULT_OFF, redis_fragment
from tasks.undeploy import FABCELERY_ROOT, REDIS_FRAGMENTS, plan_undeploy, undeploy_spec

from .conftest import PASSWORD, deployed_facts, fresh_facts, make_inventory, target_of

FILE = PathState("file", "root", "root", "644")


def summaries(plans) -> dict[str, list[str]]:
    return {p.name: [a.summary for a in p.actions] for p in plans}


def test_a_deployed_host_loses_every_file_of_fabcelerys_programs_first_then_configs_broker_and_directories():
    inventory = make_inventory()
    layout = Layout(inventory.project)
    facts = deployed_facts(inventory)
    facts = replace(facts, paths={**facts.paths, redis_fragment(inventory): FILE})
    plans = plan_undeploy(target_of(inventory), facts)
    steps = summaries(plans)
    assert list(steps) == ["supervisord", "configs", "broker", "system"]
    assert steps["supervisord"] == ["stop and remove my_proj-supervisord.service"]
    assert steps["configs"] == [
        "remove /etc/supervisor/my_proj-supervisord.conf",
        "remove /etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf",
        "remove /etc/supervisor/my_proj-programs.d/my_proj-celerybeat.conf",
        "remove /etc/logrotate.d/fabcelery-my_proj",
        f"remove fabcelery's block from {layout.settings_local}",
    ]
    assert steps["broker"] == [
        f"remove {redis_fragment(inventory)}",
        f"remove 'include {redis_fragment(inventory)}' from {REDIS_CONF}",
        f"remove '{REDIS_DEFAULT_OFF}' from {REDIS_CONF}",       # the last project on this Redis
        "restart redis-server: the project's account is gone from it",
    ]
    assert f"remove {layout.fabcelery_dir}" in steps["system"] and f"remove {layout.worker_log}" in steps["system"]
    assert "remove /etc/supervisor if empty" in steps["system"]
    # the project's code, its virtualenv and its user are never named
    everything = " ".join(s for step in steps.values() for s in step)
    assert inventory.project.virtualenv not in everything and "user arches" not in everything
    # the unit's stop is systemd's: supervisord's warm shutdown of its programs, bounded by TimeoutStopSec
    stop = plans[0].actions[0].script
    assert "systemctl disable --now --quiet my_proj-supervisord.service" in stop
    assert stop.index("disable --now") < stop.index("rm -f -- /etc/systemd/system/my_proj-supervisord.service")


def test_a_clean_host_has_nothing_to_undeploy():
    inventory = make_inventory()
    plans = plan_undeploy(target_of(inventory), fresh_facts(), purge=True)
    assert not any(p.changed or p.error for p in plans)
    assert [p.noop for p in plans] == ["my_proj-supervisord.service is not there", "no config file of fabcelery's "
                                       "is left", "no account or config of the project's is left",
                                       "nothing that fabcelery installed is left",
                                       "no file or directory of my_proj's is left"]


def test_redis_keeps_its_default_user_off_while_another_projects_fragment_is_there():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    others = replace(facts, listings={**facts.listings, REDIS_FRAGMENTS: (
        redis_fragment(inventory), "/etc/redis/fabcelery-other.conf")})
    broker = summaries(plan_undeploy(target_of(inventory), others))["broker"]
    assert f"remove '{REDIS_DEFAULT_OFF}' from {REDIS_CONF}" not in broker
    assert f"remove 'include {redis_fragment(inventory)}' from {REDIS_CONF}" in broker


def test_purge_takes_only_the_packages_a_deploy_recorded_and_a_virtualenv_it_created():
    inventory = make_inventory()
    layout = Layout(inventory.project)
    facts = deployed_facts(inventory)
    recorded = replace(facts, contents={**facts.contents, layout.installed_packages: "redis-server\nlogrotate\n",
                                        layout.created_virtualenv: "/opt/arches/venv\n"})
    purge = summaries(plan_undeploy(target_of(inventory), recorded, purge=True))["purge"]
    assert purge == ["stop redis-server.service before the package goes", "purge redis-server, logrotate",
                     "remove the virtualenv /opt/arches/venv (fabcelery created it)"]
    # a host deployed before the record, or a virtualenv of the project's own: nothing is purged
    assert summaries(plan_undeploy(target_of(inventory), facts, purge=True))["purge"] == []
    # the virtualenv is emptied as its owner, never walked by root
    plan = next(p for p in plan_undeploy(target_of(inventory), recorded, purge=True) if p.name == "purge")
    assert "runuser -u arches -- find /opt/arches/venv -mindepth 1 -delete" in plan.actions[2].script


def test_rabbitmq_loses_the_projects_vhost_and_user_and_its_node_files_when_no_other_project_is_there():
    inventory = make_inventory(broker__kind="rabbitmq")
    facts = deployed_facts(inventory)
    stamp = rabbitmq_stamp_file(inventory)
    facts = replace(facts, packages={**facts.packages, "rabbitmq-server": True},
                    contents={**facts.contents, stamp: "x"}, paths={**facts.paths, RABBITMQ_FRAGMENT: FILE},
                    subdirs={FABCELERY_ROOT: ("my_proj",)})
    broker = summaries(plan_undeploy(target_of(inventory), facts))["broker"]
    assert broker[0] == "delete RabbitMQ vhost my_proj (its queues and messages) and user my_proj"
    assert f"remove {RABBITMQ_FRAGMENT}" in broker and broker[-1] == "restart rabbitmq-server with its own settings"
    # another project on the same RabbitMQ: its account goes, the node's files stay
    shared = replace(facts, subdirs={FABCELERY_ROOT: ("my_proj", "other")})
    broker = summaries(plan_undeploy(target_of(inventory), shared))["broker"]
    assert broker == ["delete RabbitMQ vhost my_proj (its queues and messages) and user my_proj"]


def test_a_cluster_member_leaves_the_account_to_the_seed_and_keeps_the_clusters_files_without_purge():
    hosts = {"mq1": {"roles": ["broker"], "internal_address": "10.0.0.11"},
             "mq2": {"roles": ["broker"], "internal_address": "10.0.0.12"},
             "mq3": {"roles": ["broker"], "internal_address": "10.0.0.13"},
             "app": {"roles": ["worker", "beat"]}}
    inventory = make_inventory(broker__kind="rabbitmq", hosts=hosts)
    stamp = rabbitmq_stamp_file(inventory)
    facts = Facts(systemd=True, packages={"rabbitmq-server": True}, contents={stamp: "x"},
                  paths={RABBITMQ_FRAGMENT: FILE})
    seed = summaries(plan_undeploy(target_of(inventory, "mq1"), facts))["broker"]
    member = summaries(plan_undeploy(target_of(inventory, "mq2"), facts))["broker"]
    assert seed == ["delete RabbitMQ vhost my_proj (its queues and messages) and user my_proj"]
    assert member == []
    purged = summaries(plan_undeploy(target_of(inventory, "mq2"), facts, purge=True))["broker"]
    assert f"remove {RABBITMQ_FRAGMENT}" in purged


def test_the_undeploy_probe_is_one_script_asking_for_everything_the_decisions_read():
    inventory = make_inventory()
    layout = Layout(inventory.project)
    spec = undeploy_spec(target_of(inventory))
    assert layout.settings_local in spec.user_contents and layout.installed_packages in spec.contents
    assert REDIS_FRAGMENTS in spec.listings and layout.pool_conf_glob in spec.listings
    assert spec.subdirs == (FABCELERY_ROOT,) and layout.unit_name in spec.services
    assert spec.supervisord_pidfile == layout.supervisord_pid
    script = probe_script(spec)
    assert PASSWORD not in script and "find -P /var/lib/fabcelery -mindepth 1 -maxdepth 1 -type d" in script


def test_the_probe_reads_which_projects_have_a_state_directory_on_the_host(tmp_path):
    for name in ("my_proj", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "not-a-project").touch()
    # the probe's own line for it, run by sh
    script = probe_script(ProbeSpec(subdirs=(str(tmp_path),)))
    facts = parse_probe(subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout)
    assert facts.subdirs == {str(tmp_path): ("my_proj", "other")}


def test_logrotates_old_copies_of_the_projects_logs_go_too_and_no_other_projects():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    rotated = ("/var/log/celery/my_proj-worker.log.1", "/var/log/celery/my_proj-worker.log.2.gz")
    facts = replace(facts, listings={**facts.listings, ("/var/log/celery", "my_proj-*.log*"): rotated},
                    paths={**facts.paths, **{path: FILE for path in rotated}})
    system = summaries(plan_undeploy(target_of(inventory), facts))["system"]
    assert all(f"remove {path}" in system for path in rotated)
    # the probe's glob is the project's name and a dash: another project's logs never match it
    import fnmatch

    globs = [g for d, g in undeploy_spec(target_of(inventory)).listings if d == "/var/log/celery"]
    assert globs == ["my_proj-*.log*"] and not fnmatch.fnmatch("my_proj_two-worker.log", globs[0])


def test_ctrl_c_during_an_undeploy_says_the_next_undeploy_completes_it():
    from tasks.apply import interrupted
    from tasks.report import HostResult

    lines = []
    result = interrupted(HostResult(host="h"), lambda step, text: lines.append((step, text)), ["probe"],
                         ["configs"], task="undeploy")
    assert lines == [("undeploy", "interrupted (Ctrl-C): done: probe; not started: configs. "
                                  "The next undeploy completes the work")]
    assert result.interrupted
