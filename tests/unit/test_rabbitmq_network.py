"""RabbitMQ's Erlang side on loopback: epmd (4369) and the distribution port (25672).

The rendered files, the broker step's plan (fresh host, all in place, one file changed),
the probe that feeds it, and the checks a staged file passes before it is installed.
"""

import os
import subprocess

from tasks.broker_host import password_file
from tasks.configs import sha256
from tasks.deploy import plan_deploy, probe_spec
from tasks.erlang import (
    EPMD_DROPIN,
    RABBITMQ_ENV,
    RABBITMQ_ENV_CONF,
    RABBITMQ_ENV_INCLUDE,
    RABBITMQ_INETRC,
    erlang_ip,
    erlang_network,
)
from tasks.install import install_script
from tasks.plan import Upload, Validator
from tasks.rabbitmq_broker import RABBITMQ_FRAGMENT, rabbitmq_stamp, rabbitmq_stamp_file
from tasks.system import managed_paths

from .conftest import deployed_facts, fresh_facts, make_inventory, target_of
from .test_safety import me, run_install

FLEET = {
    "mq1": {"roles": ["broker"], "internal_address": "10.0.0.5"},
    "app1": {"roles": ["worker", "beat"]},
}
NODE_FILES = (RABBITMQ_ENV, RABBITMQ_INETRC, EPMD_DROPIN)


def broker_plan(inventory, facts, host="prod", password="s3cret"):
    return next(p for p in plan_deploy(target_of(inventory, host), facts, password) if p.name == "broker")


def uploads(plan) -> dict[str, Upload]:
    return {u.target: u for a in plan.actions for u in a.uploads}


def service_script(plan) -> str:
    return next(a.script for a in plan.actions if a.summary.endswith("start and check rabbitmq-server.service"))


def in_place(inventory, host="prod"):
    """A RabbitMQ host as the deploy left it: files, include line, account, service running."""
    facts = deployed_facts(inventory, host)
    facts.contents[rabbitmq_stamp_file(inventory)] = rabbitmq_stamp("my_proj", "my_proj", "s3cret")
    facts.checksums[password_file(inventory)] = sha256("s3cret")
    facts.services["rabbitmq-server.service"] = {"enabled": "enabled", "active": "active"}
    return facts


def test_a_single_node_listens_on_loopback_only_also_for_workers_on_other_hosts():
    single = make_inventory(broker__kind="rabbitmq")
    net = erlang_network(single, single.hosts["prod"], "prod")
    assert (net.epmd, net.distribution, net.names) == (("127.0.0.1",), "127.0.0.1", ("prod",))
    fleet = make_inventory(broker__kind="rabbitmq", hosts=FLEET)
    net = erlang_network(fleet, fleet.hosts["mq1"], "mq1.example.org")
    assert (net.epmd, net.distribution) == (("127.0.0.1",), "127.0.0.1")   # no peers: only AMQP goes out
    assert net.names == ("mq1", "mq1.example.org")   # rabbit@mq1: the short name first


def test_erlang_ip_tuples():
    assert erlang_ip("127.0.0.1") == "{127,0,0,1}"
    assert erlang_ip("::1") == "{0,0,0,0,0,0,0,1}"
    assert erlang_ip("fd00::a:1") == "{64768,0,0,0,0,0,10,1}"


def test_the_rendered_files_put_epmd_and_the_distribution_on_loopback():
    inventory = make_inventory(broker__kind="rabbitmq")
    files = uploads(broker_plan(inventory, fresh_facts(hostname="mq1.example.org")))
    env = files[RABBITMQ_ENV].content
    assert "\nERL_EPMD_ADDRESS=127.0.0.1\n" in env
    assert f"\nexport ERL_INETRC={RABBITMQ_INETRC}\n" in env
    # the server's listener and a CLI tool's own, added to whatever rabbitmq-env.conf set before
    assert ('\nSERVER_ADDITIONAL_ERL_ARGS="${SERVER_ADDITIONAL_ERL_ARGS:+$SERVER_ADDITIONAL_ERL_ARGS }'
            '-kernel inet_dist_use_interface {127,0,0,1}"\n') in env
    assert '\nCTL_ERL_ARGS="${CTL_ERL_ARGS:+$CTL_ERL_ARGS }-kernel inet_dist_use_interface {127,0,0,1}"\n' in env
    inetrc = files[RABBITMQ_INETRC].content
    assert '\n{host, {127,0,0,1}, ["mq1", "mq1.example.org"]}.\n{lookup, [file, native]}.\n' in inetrc
    dropin = files[EPMD_DROPIN].content
    # the empty ListenStream= drops Debian's (port 4369 on every address) before ours
    assert dropin.endswith("[Socket]\nListenStream=\nListenStream=127.0.0.1:4369\n")
    for target in NODE_FILES:
        assert (files[target].owner, files[target].group, files[target].mode) == ("root", "root", "0644")
    assert (files[RABBITMQ_ENV].validate, files[RABBITMQ_INETRC].validate) == ("sh", "erlang")


def test_the_env_file_is_sh_that_keeps_the_erlang_args_set_before_it(tmp_path):
    inventory = make_inventory(broker__kind="rabbitmq")
    env = tmp_path / "fabcelery-env.conf"
    env.write_text(uploads(broker_plan(inventory, fresh_facts()))[RABBITMQ_ENV].content)
    # as rabbitmq-env sources rabbitmq-env.conf, which sources this file at its end
    script = (f"CTL_ERL_ARGS='-setcookie x'; . {env}; "
              'printf "%s|%s|%s|%s" "$CTL_ERL_ARGS" "$SERVER_ADDITIONAL_ERL_ARGS" "$ERL_EPMD_ADDRESS" "$ERL_INETRC"')
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]}).stdout
    assert out.split("|") == ["-setcookie x -kernel inet_dist_use_interface {127,0,0,1}",
                              "-kernel inet_dist_use_interface {127,0,0,1}", "127.0.0.1", RABBITMQ_INETRC]


def test_the_fleets_broker_host_gets_the_same_loopback_erlang_side():
    inventory = make_inventory(broker__kind="rabbitmq", hosts=FLEET)
    files = uploads(broker_plan(inventory, fresh_facts(hostname="mq1"), host="mq1"))
    assert "listeners.tcp.2 = 10.0.0.5:5672\n" in files[RABBITMQ_FRAGMENT].content
    assert "10.0.0.5" not in "".join(files[t].content for t in NODE_FILES)
    assert "inet_dist_use_interface {127,0,0,1}" in files[RABBITMQ_ENV].content


def test_a_fresh_broker_host_gets_the_files_the_include_line_and_epmd_and_the_broker_restarted():
    inventory = make_inventory(broker__kind="rabbitmq")
    plan = broker_plan(inventory, fresh_facts())
    summaries = [a.summary for a in plan.actions]
    install = f"install {RABBITMQ_FRAGMENT}, {RABBITMQ_ENV}, {RABBITMQ_INETRC}, {EPMD_DROPIN}"
    include = f"source {RABBITMQ_ENV} at the end of {RABBITMQ_ENV_CONF}"
    assert summaries.index(install) < summaries.index(include) \
        < summaries.index("restart and check rabbitmq-server.service") \
        < summaries.index("RabbitMQ vhost my_proj, user my_proj with its password, no guest")
    line = next(a for a in plan.actions if a.summary == include)
    assert line.script.endswith(f" '{RABBITMQ_ENV_INCLUDE}' >> {RABBITMQ_ENV_CONF}")
    assert RABBITMQ_ENV_INCLUDE == f"if [ -f {RABBITMQ_ENV} ]; then . {RABBITMQ_ENV}; fi"
    script = service_script(plan)
    order = ["systemctl daemon-reload",
             "systemctl stop rabbitmq-server.service epmd.service epmd.socket",
             "systemctl start epmd.socket",
             "systemctl restart rabbitmq-server.service",
             "rabbitmq-diagnostics -q ping"]
    positions = [script.index(step) for step in order]
    assert positions == sorted(positions)
    # the directory of the drop-in is made by the system step, before the broker step
    assert "/etc/systemd/system/epmd.socket.d" in [m.path for m in managed_paths(target_of(inventory))]


def test_all_in_place_is_a_no_op():
    inventory = make_inventory(broker__kind="rabbitmq")
    plan = broker_plan(inventory, in_place(inventory))
    assert not plan.actions and plan.noop == "rabbitmq-server configured, enabled and running"


def test_a_changed_env_or_inetrc_restarts_the_broker_but_not_epmd():
    inventory = make_inventory(broker__kind="rabbitmq")
    facts = in_place(inventory)
    facts.checksums[RABBITMQ_INETRC] = sha256("{host, {10,88,0,5}, [\"prod\"]}.\n")
    plan = broker_plan(inventory, facts)
    assert [a.summary for a in plan.actions] == [f"install {RABBITMQ_INETRC}",
                                                "restart and check rabbitmq-server.service"]
    script = service_script(plan)
    assert "systemctl restart rabbitmq-server.service" in script and "epmd" not in script


def test_a_changed_epmd_drop_in_restarts_epmd_s_socket_too():
    inventory = make_inventory(broker__kind="rabbitmq")
    facts = in_place(inventory)
    facts.checksums[EPMD_DROPIN] = None
    plan = broker_plan(inventory, facts)
    assert [a.summary for a in plan.actions][0] == f"install {EPMD_DROPIN}"
    assert "systemctl start epmd.socket" in service_script(plan)


def test_a_missing_include_line_is_added_and_the_broker_restarted():
    inventory = make_inventory(broker__kind="rabbitmq")
    facts = in_place(inventory)
    facts.lines.clear()
    plan = broker_plan(inventory, facts)
    assert [a.summary for a in plan.actions] == [f"source {RABBITMQ_ENV} at the end of {RABBITMQ_ENV_CONF}",
                                                "restart and check rabbitmq-server.service"]


def test_without_systemd_the_broker_is_restarted_with_service():
    inventory = make_inventory(broker__kind="rabbitmq")
    plan = broker_plan(inventory, fresh_facts(systemd=False))
    script = service_script(plan)
    assert "service rabbitmq-server restart" in script and "systemctl" not in script


def test_redis_hosts_get_none_of_it():
    inventory = make_inventory()
    assert not set(NODE_FILES) & set(uploads(broker_plan(inventory, fresh_facts(), password=None)))
    spec = probe_spec(target_of(inventory))
    assert not set(NODE_FILES) & set(spec.checksums)
    assert (RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE) not in spec.lines


def test_the_probe_asks_for_what_the_plan_decides_from():
    inventory = make_inventory(broker__kind="rabbitmq")
    spec = probe_spec(target_of(inventory))
    assert set(NODE_FILES) <= set(spec.checksums)
    assert (RABBITMQ_ENV_CONF, RABBITMQ_ENV_INCLUDE) in spec.lines
    assert not set(NODE_FILES) & set(spec.contents)   # contents only for --dry-run's diffs
    assert set(NODE_FILES) <= set(probe_spec(target_of(inventory), with_contents=True).contents)
    # a worker-only host of a fleet has no broker files to look at
    fleet = make_inventory(broker__kind="rabbitmq", hosts=FLEET)
    assert not set(NODE_FILES) & set(probe_spec(target_of(fleet, "app1")).checksums)


def test_a_staged_env_file_that_sh_cannot_parse_is_never_installed(tmp_path):
    user, group = me()
    target = tmp_path / "fabcelery-env.conf"
    target.write_text("OLD=1\n")
    done, _ = run_install(tmp_path, (Upload(str(target), "if [ x ]; then\nCTL_ERL_ARGS=x\n", user, group,
                                            validate=Validator.SH),))
    assert done.returncode == 1 and f"sh -n rejects the new {target}" in done.stderr
    assert target.read_text() == "OLD=1\n"
    done, _ = run_install(tmp_path, (Upload(str(target), "NEW=1\n", user, group, validate=Validator.SH),))
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "NEW=1\n"


def test_a_staged_inetrc_is_read_with_erlangs_own_parser_before_it_is_renamed():
    script = install_script("/tmp/fabcelery-upload.abc", (Upload(RABBITMQ_INETRC, "x", validate=Validator.ERLANG),),
                            "/opt/venv/bin/python")
    check = script.index("env FABCELERY_CHECK=/etc/rabbitmq/.fabcelery.inetrc.fabcelery-new.abc erl -noshell")
    assert "file:consult(os:getenv(\"FABCELERY_CHECK\"))" in script
    assert check < script.index("\nmv -f")
