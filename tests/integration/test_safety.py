"""Safe by default, on a real server (Debian 12): a dry run changes nothing, host keys are
checked, a config that fails validation is never installed, the services are locked
down, sudo works with a password, and no secret shows up in any output.

The tests share one host and run in this order: first on the fresh server (dry run, host
keys), then after a deploy. Every `fab` output of the module is kept and searched for
the secrets at the end.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, FabRun, Project, install_example_project, run_checked, server

SUITE, NAME = "bookworm", "safe12"
SETTINGS = "/opt/arches/demo_proj/demo_proj/settings_local.py"
CELERYD = "/etc/supervisor/demo_proj-programs.d/demo_proj-celeryd.conf"
MAIN_CONF = "/etc/supervisor/demo_proj-supervisord.conf"
CTL = f"runuser -u arches -- /opt/arches/venv/bin/supervisorctl -c {MAIN_CONF}"
PENDING = "/var/lib/fabcelery/demo_proj/pending-apply"
# What changes on any server by itself, or because someone logged in over SSH: not ours.
VOLATILE = ("/proc", "/sys", "/dev", "/var/log", "/var/lib/systemd", "/var/cache/apt", "/var/lib/apt/lists",
            "/run/systemd", "/run/log", "/run/user", "/run/sudo", "/run/sshd", "/run/credentials")
SNAPSHOT = (
    "find / /run /tmp -xdev \\( " + " -o ".join(f"-path {p}" for p in VOLATILE) + " -o -path /run/motd.dynamic"
    " -o -path /run/utmp \\) -prune -o -type d -printf '%p d %m %u %g\\n' -o -printf '%p %y %m %u %g %s %T@\\n'"
    " | sort -u"
)


@pytest.fixture(scope="module")
def fresh(fleet, tmp_path_factory):
    """A fresh server with the project's code, whose settings_local.py holds secrets of its own."""
    host = fleet.start(NAME, suite=SUITE)
    install_example_project(fleet, host)
    secret_key, db_password = "sk-" + secrets.token_hex(8), "db-" + secrets.token_hex(8)
    # the last line without a newline: the managed block is appended after it
    fleet.exec(host, f"printf '%s\\n%s' 'SECRET_KEY = \"{secret_key}\"' 'DB_PASSWORD = \"{db_password}\"' "
                     f">> {SETTINGS}")
    workdir = tmp_path_factory.mktemp(NAME)
    state = {
        "fleet": fleet, "host": host, "server": server(fleet, host), "workdir": workdir,
        "project": Project(fleet, workdir, {NAME: {"roles": ["broker", "worker", "beat"]}}),
        "secrets": {"SECRET_KEY": secret_key, "DB_PASSWORD": db_password},
        "outputs": [],
    }
    yield state
    fleet.remove(host)


@pytest.fixture(scope="module")
def deployed(fresh):
    run = fab(fresh, "-H", NAME, "deploy")
    assert run.returncode == 0, run.output
    return fresh


def fab(state, *args: str, env: dict | None = None, ssh_config: Path | None = None) -> FabRun:
    run = state["project"].fab(*args, env=env, ssh_config=ssh_config)
    state["outputs"].append(run.output)
    return run


def sh(state, command: str, **kwargs) -> str:
    return state["fleet"].exec(state["host"], command, **kwargs).stdout


def logins(state) -> int:
    """SSH logins the server has seen (sshd's journal)."""
    return int(sh(state, "journalctl -q --no-pager _COMM=sshd | grep -c 'Accepted publickey' || true").strip())


def ssh_config_with(state, name: str, **replace: str) -> Path:
    """The fleet's ssh_config with some settings of the host replaced."""
    text = state["fleet"].ssh_config_path.read_text()
    for key, value in replace.items():
        text = re.sub(rf"(?m)^(\s+{key}) .*$", rf"\1 {value}", text)
    path = state["workdir"] / name
    path.write_text(text)
    return path


def pids(state) -> dict[str, int]:
    out = sh(state, f"LC_ALL=C {CTL} status")
    return {p[0]: int(p[3].rstrip(",")) for p in (line.split() for line in out.splitlines())
            if len(p) >= 4 and p[1] == "RUNNING"}


def supervisord_pid(state) -> int:
    return int(sh(state, "cat /run/demo_proj-supervisor/supervisord.pid").strip())


# --- the fresh server -------------------------------------------------------------------------


def test_dry_run_on_a_fresh_server_changes_nothing(fresh):
    before = sh(fresh, SNAPSHOT)
    assert f"{SETTINGS} f 644 root root" in before        # the snapshot sees what a deploy would change
    run = fab(fresh, "-H", NAME, "deploy", "--dry-run")
    assert run.returncode == 0, run.output
    assert "dry run: nothing will be changed" in run.output
    for line in ("system       would install python3, python3-venv, logrotate, redis-server",
                 "system       would create user arches", "python       would create virtualenv /opt/arches/venv",
                 "supervisord  would start supervisord (demo_proj-supervisord.service)"):
        assert f"{NAME}  {line}" in run.output
    # a diff for every file that would change
    for path in (MAIN_CONF, CELERYD, "/etc/supervisor/demo_proj-programs.d/demo_proj-celerybeat.conf",
                 "/etc/systemd/system/demo_proj-supervisord.service", SETTINGS):
        assert f"+++ {path} (after deploy)" in run.output
    assert "+CELERY_ACCEPT_CONTENT = [\"json\"]" in run.output
    after = sh(fresh, SNAPSHOT)
    assert after == before
    srv = fresh["server"]
    assert not srv.user("arches").exists and not srv.package("redis-server").is_installed
    assert not srv.file("/opt/arches/venv").exists and not srv.file("/etc/supervisor").exists


def test_an_unknown_host_key_is_refused_and_not_recorded(fresh):
    known = fresh["workdir"] / "empty_known_hosts"
    known.write_text("")
    config = ssh_config_with(fresh, "ssh_config_unknown", UserKnownHostsFile=str(known))
    home = fresh["workdir"] / "home"
    seen = logins(fresh)
    run = fab(fresh, "-H", NAME, "deploy", "--dry-run", ssh_config=config, env={"HOME": str(home)})
    assert run.returncode == 1
    assert "is not known" in run.output and "--accept-new-host-keys" in run.output
    assert f"ssh-keyscan -p {fresh['host'].port} 127.0.0.1 >> {known}" in run.output
    server_keys = sh(fresh, "for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -l -E sha256 -f $f; done")
    assert any(line.split()[1] in run.output for line in server_keys.splitlines())   # the key it offered
    assert known.read_text() == "" and not home.exists()
    assert "probe" not in run.output and logins(fresh) == seen      # no command, no login at all


def test_accept_new_host_keys_records_the_key_once_then_it_is_known(fresh):
    known = fresh["workdir"] / "tofu_known_hosts"
    known.write_text("")
    config = ssh_config_with(fresh, "ssh_config_tofu", UserKnownHostsFile=str(known))
    env = {"HOME": str(fresh["workdir"] / "home")}
    first = fab(fresh, "-H", NAME, "deploy", "--dry-run", "--accept-new-host-keys", ssh_config=config, env=env)
    assert first.returncode == 0, first.output
    recorded = known.read_text()
    assert recorded.count("\n") == 1 and recorded.startswith(f"[127.0.0.1]:{fresh['host'].port} ")
    harness_keys = [line.split()[1:] for line in fresh["fleet"].known_hosts_path.read_text().splitlines()]
    assert recorded.split()[1:] in harness_keys           # the server's real key (the harness scanned it)
    # OpenSSH, with strict checking, accepts what was recorded
    run_checked(["ssh", "-F", str(config), NAME, "true"], timeout=30)
    second = fab(fresh, "-H", NAME, "deploy", "--dry-run", ssh_config=config, env=env)
    assert second.returncode == 0, second.output
    assert known.read_text() == recorded


def test_a_changed_host_key_is_refused_even_with_accept_new(fresh):
    other = fresh["workdir"] / "other_key"
    run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    known = fresh["workdir"] / "changed_known_hosts"
    recorded = f"[127.0.0.1]:{fresh['host'].port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2])
    known.write_text(recorded + "\n")
    config = ssh_config_with(fresh, "ssh_config_changed", UserKnownHostsFile=str(known))
    seen = logins(fresh)
    for extra in ((), ("--accept-new-host-keys",)):
        run = fab(fresh, "-H", NAME, "deploy", "--dry-run", *extra, ssh_config=config)
        assert run.returncode == 1
        assert "has CHANGED" in run.output and f"ssh-keygen -R '[127.0.0.1]:{fresh['host'].port}'" in run.output
        assert "probe" not in run.output
    assert known.read_text() == recorded + "\n"
    assert logins(fresh) == seen


# --- after a deploy ---------------------------------------------------------------------------


def test_dry_run_after_changing_concurrency_shows_the_diff_and_changes_nothing(deployed):
    project, srv = deployed["project"], deployed["server"]
    file_before, pids_before = srv.file(CELERYD).sha256sum, pids(deployed)
    project.data["celery"]["concurrency"] = 3
    project.write()
    try:
        run = fab(deployed, "-H", NAME, "deploy", "--dry-run")
    finally:
        project.data["celery"]["concurrency"] = 2
        project.write()
    assert run.returncode == 0, run.output
    assert f"{NAME}  configs      would install demo_proj-celeryd.conf" in run.output
    assert f"--- {CELERYD} (on the host)" in run.output
    assert re.search(r"(?m)^-command=.* worker .*--concurrency=2 ", run.output)
    assert re.search(r"(?m)^\+command=.* worker .*--concurrency=3 ", run.output)
    assert f"{NAME}  supervisord  would reread and update (celery)" in run.output
    assert srv.file(CELERYD).sha256sum == file_before and "--concurrency=2" in srv.file(CELERYD).content_string
    assert pids(deployed) == pids_before and not srv.file(PENDING).exists


def test_an_invalid_supervisor_config_is_rejected_and_the_worker_keeps_running(deployed):
    srv = deployed["server"]
    broken = deployed["workdir"] / "broken_templates"
    broken.mkdir()
    original = (ROOT / "templates" / "celeryd.conf.j2").read_text()
    assert "\nstartsecs=3\n" in original
    (broken / "celeryd.conf.j2").write_text(original.replace("\nstartsecs=3\n", "\nstartsecs=ten\n"))
    files_before = srv.check_output("ls -A /etc/supervisor/demo_proj-programs.d")
    conf_before, pids_before = srv.file(CELERYD).sha256sum, pids(deployed)
    supervisord_before = supervisord_pid(deployed)

    run = fab(deployed, "-H", NAME, "deploy", env={"FABCELERY_TEMPLATES": str(broken)})
    assert run.returncode == 1
    assert "invalid literal for int() with base 10: 'ten' in section 'program:celery'" in run.output
    assert f"supervisor's parser rejects the new {CELERYD}" in run.output
    assert "nothing was installed" in run.output and "supervisord  " not in run.output
    assert srv.file(CELERYD).sha256sum == conf_before
    assert srv.check_output("ls -A /etc/supervisor/demo_proj-programs.d") == files_before      # no staged file left
    assert pids(deployed) == pids_before and supervisord_pid(deployed) == supervisord_before
    assert not srv.file(PENDING).exists
    assert srv.run("ls -d /tmp/fabcelery-upload.*").rc != 0                    # nor the private upload
    # and with the project's own templates again, there is nothing left to do
    again = fab(deployed, "-H", NAME, "deploy")
    assert again.recap()[NAME] == {"ok": 7, "changed": 0, "failed": 0}, again.output


def test_an_invalid_redis_config_is_rejected_and_redis_keeps_running(deployed):
    srv = deployed["server"]
    broken = deployed["workdir"] / "broken_redis_template"
    broken.mkdir()
    (broken / "redis.conf.j2").write_text("bind 127.0.0.1 -::1\nprotected-mode maybe\n")
    fragment = "/etc/redis/fabcelery-demo_proj.conf"
    before = srv.file(fragment).sha256sum, srv.service("redis-server").is_running
    redis_pid = sh(deployed, "systemctl show -p MainPID --value redis-server").strip()

    run = fab(deployed, "-H", NAME, "deploy", env={"FABCELERY_TEMPLATES": str(broken)})
    assert run.returncode == 1
    assert f"redis-server rejects the new {fragment}" in run.output and "FATAL CONFIG FILE ERROR" in run.output
    assert "python       " not in run.output                                  # nothing after it ran
    assert (srv.file(fragment).sha256sum, srv.service("redis-server").is_running) == before
    assert sh(deployed, "systemctl show -p MainPID --value redis-server").strip() == redis_pid
    assert srv.check_output("ls -A /etc/redis | grep -c fabcelery-new || true") == "0"
    again = fab(deployed, "-H", NAME, "deploy")
    assert again.recap()[NAME] == {"ok": 7, "changed": 0, "failed": 0}, again.output


def test_supervisord_is_reachable_only_through_its_private_socket_under_run(deployed):
    srv = deployed["server"]
    conf = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    conf.read_string(srv.file(MAIN_CONF).content_string)
    assert "inet_http_server" not in conf.sections()
    # supervisord runs as the project user: the socket is that user's alone (and root's)
    assert conf["unix_http_server"]["file"] == "/run/demo_proj-supervisor/supervisor.sock"
    assert conf["unix_http_server"]["chmod"] == "0700"
    sock = srv.file("/run/demo_proj-supervisor/supervisor.sock")
    assert sock.is_socket and (sock.user, sock.group, sock.mode) == ("arches", "arches", 0o700)
    # as that user: root in these containers may not read another user's /proc/PID/fd
    unix = [line.split()[4] for line in srv.check_output("runuser -u arches -- ss -Hxlp").splitlines()
            if '"supervisord"' in line]
    assert unix and all(path.startswith("/run/demo_proj-supervisor/supervisor.sock") for path in unix), unix


def test_nothing_but_sshd_listens_beyond_loopback(deployed):
    listeners = deployed["server"].check_output("ss -Hltunp").splitlines()
    assert any('"redis-server"' in line for line in listeners)
    assert not any(name in line for line in listeners for name in ('"supervisord"', '"celery"', '"python'))
    for line in listeners:
        address = line.split()[4].rsplit(":", 1)[0]
        assert address in ("127.0.0.1", "[::1]") or '"sshd"' in line, line


def test_files_holding_a_password_are_not_world_readable(deployed):
    srv = deployed["server"]
    ours = (f"/etc/supervisor /etc/redis/fabcelery-demo_proj.conf /var/lib/fabcelery /etc/systemd/system/demo_proj-* "
            f"{SETTINGS}")
    holding = srv.check_output(f"grep -rlsiE 'password|passwd|secret|requirepass' {ours} || true").split()
    assert SETTINGS in holding
    for path in holding:
        assert srv.file(path).mode & 0o007 == 0, path
    f = srv.file(SETTINGS)
    assert (f.user, f.group, f.mode) == ("root", "arches", 0o640)


def test_the_worker_refuses_pickle_and_accepts_json(deployed):
    srv = deployed["server"]
    log = "/var/log/celery/demo_proj-worker.log"
    refused = "Refusing to deserialize untrusted content of type pickle"
    count = int(srv.check_output(f"grep -c '{refused}' {log} || true"))
    send = ("cd /opt/arches/demo_proj && runuser -u arches -- /opt/arches/venv/bin/python -c "
            "'from demo_proj.celery import app; "
            "print(app.send_task(\"demo_proj.tasks.add\", args=(40, 2), serializer=\"{}\").get(timeout={}))'")
    assert srv.run(send.format("pickle", 5)).rc != 0                    # never executed: no result
    assert srv.run(f"for i in $(seq 20); do [ $(grep -c '{refused}' {log}) -gt {count} ] && exit 0; sleep 0.5;"
                   " done; exit 1").rc == 0
    assert srv.check_output(send.format("json", 30)) == "42"


# --- sudo with a password -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sudoer(deployed):
    """A second login user whose sudo asks for a password, with the fleet's SSH key."""
    password = "Sudo-" + secrets.token_hex(8)
    deployed["fleet"].exec(
        deployed["host"],
        "useradd --create-home --shell /bin/bash sudoer && chpasswd"   # the password on stdin, not a command line
        " && echo 'sudoer ALL=(ALL) ALL' > /etc/sudoers.d/sudoer && chmod 0440 /etc/sudoers.d/sudoer"
        " && install -d -o sudoer -g sudoer -m 0700 /home/sudoer/.ssh"
        " && install -o sudoer -g sudoer -m 0600 /home/deploy/.ssh/authorized_keys /home/sudoer/.ssh/",
        input=f"sudoer:{password}\n",
    )
    deployed["secrets"]["sudo password"] = password
    return {**deployed, "password": password, "config": ssh_config_with(deployed, "ssh_config_sudoer", User="sudoer")}


def test_sudo_that_needs_a_password_is_explained_and_nothing_runs(sudoer):
    run = fab(sudoer, "-H", NAME, "deploy", ssh_config=sudoer["config"])
    assert run.returncode == 1
    assert "sudo on this host needs a password: run again with --prompt-for-sudo-password" in run.output
    assert "system" not in run.output


def test_sudo_password_from_fabrics_config(sudoer):
    env = {"FABRIC_SUDO_PASSWORD": sudoer["password"]}
    run = fab(sudoer, "-H", NAME, "deploy", ssh_config=sudoer["config"], env=env)
    assert run.recap()[NAME] == {"ok": 7, "changed": 0, "failed": 0}, run.output
    # a change: uploaded as sudoer, installed and applied through sudo with the password
    sudoer["project"].data["celery"]["concurrency"] = 3
    sudoer["project"].write()
    run = fab(sudoer, "-H", NAME, "deploy", ssh_config=sudoer["config"], env=env)
    assert run.returncode == 0 and run.recap()[NAME]["changed"] == 2, run.output
    assert "--concurrency=3 " in sudoer["server"].file(CELERYD).content_string


def test_prompt_for_sudo_password(sudoer):
    command = [str(Path(sys.executable).parent / "fab"), "-r", str(ROOT), "-S", str(sudoer["config"]),
               "--prompt-for-sudo-password", "-H", NAME, "deploy"]
    env = {**os.environ, "FABCELERY_INVENTORY": str(sudoer["project"].inventory_path)}
    # a new session has no terminal: getpass reads the answer from stdin, as it would from a tty
    done = subprocess.run(command, input=sudoer["password"] + "\n", capture_output=True, text=True, env=env,
                          timeout=300, start_new_session=True)
    output = done.stdout + done.stderr
    sudoer["outputs"].append(output)
    assert done.returncode == 0, output
    assert FabRun(0, output).recap()[NAME] == {"ok": 7, "changed": 0, "failed": 0}


def test_a_wrong_sudo_password_is_refused_clearly(sudoer):
    run = fab(sudoer, "-H", NAME, "deploy", ssh_config=sudoer["config"], env={"FABRIC_SUDO_PASSWORD": "wrong-one"})
    assert run.returncode == 1
    assert "sudo on this host refused the password given for sudoer" in run.output


# --- a broker password ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_hosts(sudoer):
    """The host becomes the broker of a worker on a second host: Redis then listens on its
    internal address too, and the project's account gets the password from the environment.

    The password comes from an environment variable whose name does not end in _PASSWORD,
    so only fabcelery's own masking can keep it out of the output."""
    fleet = sudoer["fleet"]
    worker = fleet.start(NAME + "w", suite=SUITE)
    install_example_project(fleet, worker)
    password = "Bk-" + secrets.token_hex(12)
    sudoer["secrets"]["broker password"] = password
    project = sudoer["project"]
    project.data["broker"]["password_env"] = "SAFE_BROKER_KEY"
    project.data["hosts"] = {
        NAME: {"roles": ["broker", "worker", "beat"], "internal_address": sudoer["host"].internal_ip},
        NAME + "w": {"roles": ["worker"]},
    }
    project.write()
    sudoer["other_hosts"] = [worker]
    yield {**sudoer, "env": {"SAFE_BROKER_KEY": password}, "password": password}
    fleet.remove(worker)


def test_with_a_worker_on_another_host_redis_gets_a_password_that_is_never_shown(two_hosts):
    dry = fab(two_hosts, "deploy", "--dry-run", env=two_hosts["env"])
    assert dry.returncode == 0, dry.output
    assert "+user demo_proj reset on #******** resetkeys" in dry.output   # the broker's fragment: no hash shown
    assert re.search(r"\+CELERY_BROKER_URL = 'redis://demo_proj:\*{8}@\d+\.\d+\.\d+\.\d+:6379/0'",
                     dry.output)                                                              # the worker's
    run = fab(two_hosts, "-H", NAME, "deploy", env=two_hosts["env"])    # the broker host only
    assert run.returncode == 0, run.output
    srv = two_hosts["server"]
    fragment = srv.file("/etc/redis/fabcelery-demo_proj.conf")
    digest = hashlib.sha256(two_hosts["password"].encode()).hexdigest()
    assert f"#{digest} " in fragment.content_string and two_hosts["password"] not in fragment.content_string
    assert f"bind 127.0.0.1 -::1 {two_hosts['host'].internal_ip}\n" in fragment.content_string
    assert fragment.mode & 0o007 == 0
    assert two_hosts["password"] in srv.file(SETTINGS).content_string and srv.file(SETTINGS).mode == 0o640
    assert "NOAUTH" in srv.run("redis-cli ping").stdout                # Redis wants the account's password
    assert srv.check_output('REDISCLI_AUTH="$(cat /var/lib/fabcelery/demo_proj/broker-password)" '
                            "redis-cli --user demo_proj ping") == "PONG"   # the new one, from the environment


# --- last: what was shown -----------------------------------------------------------------------


def test_no_secret_in_any_output_or_on_a_command_line(two_hosts):
    outputs = "\n".join(two_hosts["outputs"])
    assert len(two_hosts["outputs"]) >= 12 and f"+++ {SETTINGS} (after deploy)" in outputs
    # sudo logs every command line it runs, with its arguments
    fleet = two_hosts["fleet"]
    journals = [fleet.exec(host, "journalctl -q --no-pager").stdout
                for host in [two_hosts["host"], *two_hosts["other_hosts"]]]
    assert "sudoer : " in journals[0] and "COMMAND=" in journals[0]
    # and one line each: the scripts reach root in a private file, not on sudo's command line
    for journal in journals:
        commands = re.findall(r"^.* (?:deploy|sudoer) : .*COMMAND=(.*)$", journal, re.M)
        assert commands and all(re.fullmatch(r"/usr/bin/sh /tmp/fabcelery-run\.[0-9a-f]{32}", c) for c in commands), \
            commands[:3]
        assert "(command continued)" not in journal
    for what, value in two_hosts["secrets"].items():
        assert value not in outputs, what
        for journal in journals:
            assert value not in journal, what
