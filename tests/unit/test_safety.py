"""Safe by default, without a server: host keys, sudo, staged and validated installs, the
record of changes still to apply, masked secrets, and bad input refused before anything runs."""

from __future__ import annotations

import base64
import grp
import io
import os
import pwd
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest
from fabric import Config, Connection
from invoke.exceptions import AuthFailure
from invoke.runners import Result

from tasks.apply import file_diff
from tasks.command_line import check_destinations
from tasks.deploy import plan_deploy
from tasks.host_errors import HostError
from tasks.host_keys import AcceptNewPolicy, RefuseUnknownPolicy, UnknownHostKey, fingerprint, known_hosts_files
from tasks.install import install_script
from tasks.inventory import HostSpec, InventoryError, Project
from tasks.layout import Layout, stage_path
from tasks.plan import Upload, Validator
from tasks.remote import Remote
from tasks.rendering import TEMPLATES, template_dirs
from tasks.report import Reporter
from tasks.shell import through_private_file

from .conftest import PASSWORD, deployed_facts, make_inventory, probe_output, target_of
from .sudo_stub import run_with_stub_sudo

CELERYD = "/etc/supervisor/my_proj-programs.d/my_proj-celeryd.conf"
PENDING = "/var/lib/fabcelery/my_proj/pending-apply"


# --- host keys --------------------------------------------------------------------------


def new_key(tmp_path: Path, name: str = "key") -> tuple[paramiko.PKey, Path]:
    """A fresh ed25519 public key made by ssh-keygen, as paramiko sees a server's key."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    kind, data = path.with_suffix(".pub").read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data)), path.with_suffix(".pub")


def remote_for(tmp_path: Path, known_hosts: Path, accept_new: bool = False, port: int = 2222) -> Remote:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host *\n    UserKnownHostsFile {known_hosts}\n")
    config = Config(runtime_ssh_path=str(ssh_config))
    return Remote(HostSpec("prod", address="127.0.0.1", port=port, user="deploy"), config, accept_new)


def failing_open(exc: Exception):
    def open_():
        raise exc
    return open_


def test_a_fingerprint_reads_as_ssh_keygen_prints_it(tmp_path):
    key, pub = new_key(tmp_path)
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True,
                            check=True).stdout.split()[1]
    assert fingerprint(key) == listed


def test_an_unknown_key_is_refused_with_its_fingerprint_and_the_ways_to_accept_it(tmp_path):
    key, _ = new_key(tmp_path)
    known = tmp_path / "known_hosts"
    remote = remote_for(tmp_path, known)
    remote.conn.open = failing_open(UnknownHostKey("[127.0.0.1]:2222", key))
    with pytest.raises(HostError) as error:
        remote.open()
    message = str(error.value)
    assert "[127.0.0.1]:2222 is not known" in message
    assert fingerprint(key) in message
    assert f"ssh-keyscan -p 2222 127.0.0.1 >> {known}" in message
    assert "--accept-new-host-keys" in message and "Nothing was run" in message
    assert isinstance(remote.conn.client._policy, RefuseUnknownPolicy)
    assert not known.exists()


def test_refuse_policy_raises_and_writes_nothing(tmp_path):
    key, _ = new_key(tmp_path)
    client = paramiko.SSHClient()
    with pytest.raises(UnknownHostKey):
        RefuseUnknownPolicy().missing_host_key(client, "[127.0.0.1]:2222", key)
    assert len(client.get_host_keys()) == 0


def test_a_changed_key_is_refused_and_names_both_keys_and_the_file(tmp_path):
    old, old_pub = new_key(tmp_path, "old")
    new, _ = new_key(tmp_path, "new")
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:2222 " + " ".join(old_pub.read_text().split()[:2]) + "\n")
    for accept_new in (False, True):
        remote = remote_for(tmp_path, known, accept_new=accept_new)
        remote.conn.open = failing_open(paramiko.BadHostKeyException("127.0.0.1", new, old))
        with pytest.raises(HostError) as error:
            remote.open()
        message = str(error.value)
        assert "has CHANGED" in message and fingerprint(new) in message and fingerprint(old) in message
        assert f"ssh-keygen -R '[127.0.0.1]:2222' -f {known}" in message
        # the recorded key was loaded before connecting: that is what paramiko compares with
        assert remote.conn.client.get_host_keys().lookup("[127.0.0.1]:2222")["ssh-ed25519"] == old
    assert known.read_text().count("\n") == 1


def test_on_port_22_the_entry_is_the_bare_host_name(tmp_path):
    old, _ = new_key(tmp_path, "old")
    new, _ = new_key(tmp_path, "new")
    remote = remote_for(tmp_path, tmp_path / "known_hosts", port=22)
    remote.conn.open = failing_open(paramiko.BadHostKeyException("127.0.0.1", new, old))
    with pytest.raises(HostError, match=r"ssh-keygen -R '127\.0\.0\.1' -f"):
        remote.open()


def test_accept_new_records_the_key_in_openssh_format_privately(tmp_path):
    key, pub = new_key(tmp_path)
    known = tmp_path / "fresh" / "known_hosts"
    client = paramiko.SSHClient()
    AcceptNewPolicy(known).missing_host_key(client, "[127.0.0.1]:2222", key)
    assert known.read_text() == "[127.0.0.1]:2222 " + " ".join(pub.read_text().split()[:2]) + "\n"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700
    assert client.get_host_keys().lookup("[127.0.0.1]:2222")["ssh-ed25519"] == key
    assert paramiko.HostKeys(str(known)).lookup("[127.0.0.1]:2222")["ssh-ed25519"] == key
    # OpenSSH reads the line too
    found = subprocess.run(["ssh-keygen", "-F", "[127.0.0.1]:2222", "-f", str(known)], capture_output=True)
    assert found.returncode == 0


def test_accept_new_does_not_glue_its_line_to_a_last_line_without_newline(tmp_path):
    other, other_pub = new_key(tmp_path, "other")
    key, _ = new_key(tmp_path, "key")
    known = tmp_path / "known_hosts"
    known.write_text("otherhost " + " ".join(other_pub.read_text().split()[:2]))   # no newline at the end
    AcceptNewPolicy(known).missing_host_key(paramiko.SSHClient(), "[127.0.0.1]:2222", key)
    keys = paramiko.HostKeys(str(known))
    assert keys.lookup("otherhost")["ssh-ed25519"] == other
    assert keys.lookup("[127.0.0.1]:2222")["ssh-ed25519"] == key


def test_jump_hosts_get_the_same_host_key_checks(tmp_path):
    known = tmp_path / "known_hosts"
    remote = remote_for(tmp_path, known, accept_new=True)
    remote.conn.gateway = Connection("jump", config=remote.conn.config)
    seen = {}

    def open_():
        seen["policies"] = [type(remote.conn.client._policy), type(remote.conn.gateway.client._policy)]
        raise OSError("stop here")

    remote.conn.open = open_
    with pytest.raises(HostError):
        remote.open()
    # Fabric's own default would be AutoAddPolicy (accept any key) for the jump host
    assert seen["policies"] == [AcceptNewPolicy, AcceptNewPolicy]


def test_a_broken_known_hosts_file_is_a_clear_error(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:2222 ssh-ed25519 not-base64!!\n")
    remote = remote_for(tmp_path, known)
    remote.conn.open = failing_open(AssertionError("must not connect"))
    with pytest.raises(HostError, match="cannot read the known hosts file"):
        remote.open()


def test_user_known_hosts_files_from_ssh_config():
    assert known_hosts_files({"userknownhostsfile": "~/a /b"}) == [Path.home() / "a", Path("/b")]
    assert known_hosts_files({}) == [Path.home() / ".ssh" / "known_hosts"]
    assert known_hosts_files({"userknownhostsfile": "none"}) == [Path.home() / ".ssh" / "known_hosts"]


# --- sudo -------------------------------------------------------------------------------


class FakeConnection:
    """What run_root uses of a Fabric Connection; records the commands."""

    def __init__(self, user: str, password: str | None = None, result: Result | Exception | None = None):
        self.user = user
        self.config = SimpleNamespace(sudo=SimpleNamespace(password=password, prompt="[sudo] password: "))
        self.result = Result(stdout="done", exited=0) if result is None else result   # a failed Result is falsy
        self.calls: list[tuple[str, str]] = []
        self.options: list[dict] = []

    def _answer(self, how: str, command: str, **options):
        self.calls.append((how, command))
        self.options.append(options)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def run(self, command, **kwargs):
        return self._answer("run", command, **kwargs)

    def sudo(self, command, **kwargs):
        return self._answer("sudo", command, **kwargs)


def remote_with(conn: FakeConnection) -> Remote:
    remote = Remote(HostSpec("prod"), Config())
    remote.conn = conn
    return remote


def test_root_runs_the_script_directly_and_a_user_through_sudo_n(tmp_path):
    root = FakeConnection("root")
    remote_with(root).run_root("a && b", "x")
    assert root.calls == [("run", "timeout -k 5 60 sh -c 'a && b'")]
    deploy = FakeConnection("deploy")
    remote_with(deploy).run_root("a && b", "x", timeout=900)
    [(how, command)] = deploy.calls
    # sudo logs its command line: the script reaches root in a private file, removed afterwards
    ran = run_with_stub_sudo(command, tmp_path, exit_status=3)
    assert how == "run" and ran.argv == ["-n", "-H", "sh", str(ran.file)] and "a && b" not in " ".join(ran.argv)
    assert ran.program == "timeout -k 5 900 sh -c 'a && b'"
    assert ran.mode == "600" and ran.file.name.startswith("fabcelery-run.") and not ran.file.exists()
    assert ran.exited == 3                                  # the command's own exit status


def test_with_a_sudo_password_fabric_answers_the_prompt_and_the_password_is_on_no_command_line(tmp_path):
    conn = FakeConnection("deploy", password="pw-Sud0")
    remote_with(conn).run_root("id -u", "x")
    [(how, command)] = conn.calls
    ran = run_with_stub_sudo(command, tmp_path)
    assert ran.argv == ["-S", "-p", "[sudo] password: ", "-H", "sh", str(ran.file)]
    assert ran.program == "timeout -k 5 60 sh -c 'id -u'"
    assert "pw-Sud0" not in command + ran.program
    [answer] = conn.options[0]["watchers"]      # the password goes to sudo's prompt on stdin
    assert answer.pattern == re.escape("[sudo] password: ") and answer.response == "pw-Sud0\n"


def test_a_script_goes_to_root_only_through_a_new_file(tmp_path):
    """noclobber: a file or a link already at the path is not written through, and the command
    does not run; what was there stays."""
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    path = tmp_path / "fabcelery-run.x"
    path.symlink_to(target)
    done = subprocess.run(["/bin/sh", "-c", through_private_file("echo hi", str(path), "echo RAN")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "RAN" not in done.stdout
    assert path.is_symlink() and target.read_text() == "keep"


def test_sudo_that_needs_a_password_says_how_to_give_one():
    conn = FakeConnection("deploy", result=Result(stderr="sudo: a password is required\n", exited=1))
    with pytest.raises(HostError, match="--prompt-for-sudo-password"):
        remote_with(conn).run_root("true", "probe")


def test_a_wrong_sudo_password_is_reported_without_it():
    result = Result(stderr="[sudo] password: Sorry, try again.\n", exited=1)
    conn = FakeConnection("deploy", password="pw-Sud0", result=AuthFailure(result=result, prompt="[sudo] password: "))
    with pytest.raises(HostError) as error:
        remote_with(conn).run_root("true", "probe")
    assert "refused the password" in str(error.value) and "pw-Sud0" not in str(error.value)


def test_command_output_shown_on_failure_is_masked():
    out = "redis://:pw-Sud0@mq1:6379/0\nrequirepass \"hunter2\"\nSECRET_KEY = 'abc'\nthe end"
    conn = FakeConnection("deploy", password="pw-Sud0", result=Result(stderr=out, exited=1))
    with pytest.raises(HostError) as error:
        remote_with(conn).run_root("false", "configs")
    message = str(error.value)
    for secret in ("pw-Sud0", "hunter2", "abc"):
        assert secret not in message
    assert "the end" in message


# --- staged, validated, atomic installs ----------------------------------------------------


def me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def run_install(tmp_path: Path, uploads: tuple[Upload, ...], before_rename: str = ""):
    upload_dir = tmp_path / "upload"
    upload_dir.mkdir(mode=0o700)
    for index, upload in enumerate(uploads):
        (upload_dir / str(index)).write_text(upload.content)
    user, group = me()
    # the validator runs as the project user with the virtualenv's Python: here, this one's
    layout = Layout(Project("p", str(tmp_path), sys.prefix, user, group))
    script = install_script(str(upload_dir), uploads, layout, before_rename)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True), upload_dir


def test_install_script_installs_with_owner_and_mode_and_records_before_renaming(tmp_path):
    user, group = me()
    conf, settings = tmp_path / "p-celeryd.conf", tmp_path / "settings_local.py"
    settings.write_text("OLD = 1\n")
    uploads = (Upload(str(conf), "[program:celery]\ncommand=/bin/true\nstartsecs=10\n", user, group, "0644",
                      validate=Validator.PROGRAMS),
               Upload(str(settings), "NEW = 1\n", user, group, "0640", secret=True))
    marker = tmp_path / "recorded"
    done, upload_dir = run_install(tmp_path, uploads, f"cp {settings} {marker}")
    assert done.returncode == 0, done.stderr
    assert conf.read_text().startswith("[program:celery]") and settings.read_text() == "NEW = 1\n"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o640
    assert marker.read_text() == "OLD = 1\n"   # before_rename ran before the renames
    assert not upload_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p-celeryd.conf", "recorded", "settings_local.py"]


def test_a_config_that_fails_validation_is_never_installed_and_nothing_else_runs(tmp_path):
    user, group = me()
    conf, settings = tmp_path / "p-celeryd.conf", tmp_path / "settings_local.py"
    conf.write_text("[program:celery]\ncommand=/bin/true\n")
    settings.write_text("OLD = 1\n")
    uploads = (Upload(str(conf), "[program:celery]\ncommand=/bin/true\nstartsecs=ten\n", user, group,
                      validate=Validator.PROGRAMS),
               Upload(str(settings), "NEW = 1\n", user, group, "0640"))
    done, upload_dir = run_install(tmp_path, uploads, f"touch {tmp_path}/recorded")
    assert done.returncode == 1
    assert "invalid literal for int() with base 10: 'ten'" in done.stderr
    assert f"supervisor's parser rejects the new {conf}" in done.stderr and "nothing was installed" in done.stderr
    assert conf.read_text() == "[program:celery]\ncommand=/bin/true\n" and settings.read_text() == "OLD = 1\n"
    assert not upload_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p-celeryd.conf", "settings_local.py"]


def test_contents_never_reach_the_script_and_odd_paths_are_quoted():
    uploads = (Upload("/etc/redis/fabcelery.conf", 'requirepass "s3cret"\n', "root", "redis", "0640",
                      validate=Validator.REDIS, secret=True),
               Upload("/srv/my proj/settings_local.py", "X = 'y'\n"))
    script = install_script("/tmp/fabcelery-upload.abc", uploads, Layout(make_inventory().project), "record")
    assert "s3cret" not in script and "X = 'y'" not in script
    assert "mv -f '/srv/my proj/.settings_local.py.fabcelery-new.abc' '/srv/my proj/settings_local.py'" in script
    redis = script.index("redis-server /etc/redis/.fabcelery.conf.fabcelery-new.abc --port 0")
    assert script.index("install -o root -g redis -m 0640") < redis < script.index("\nrecord\n") \
        < script.index("\nmv -f")
    assert stage_path("/etc/redis/fabcelery.conf", "abc") == "/etc/redis/.fabcelery.conf.fabcelery-new.abc"


# --- what a deploy cut off still has to apply ------------------------------------------------


def plans(inventory, facts):
    return {p.name: p for p in plan_deploy(target_of(inventory), facts, PASSWORD)}


def test_a_changed_config_is_recorded_before_it_is_renamed_and_forgotten_once_applied():
    after = make_inventory(celery__concurrency=4)
    steps = plans(after, deployed_facts(make_inventory()))
    record = steps["configs"].record_pending
    assert record == (f"{{ grep -sx virtualenv {PENDING} || :; printf '%s\\n' {CELERYD}; }} > {PENDING}.new\n"
                      f"mv -f {PENDING}.new {PENDING}")
    assert [a.summary for a in steps["supervisord"].actions] == ["reread and update (celery)"]
    assert steps["supervisord"].after_success == f"rm -f {PENDING}"


def test_a_config_installed_but_not_applied_by_a_cut_off_deploy_is_applied_by_the_next():
    after = make_inventory(celery__concurrency=4)
    facts = deployed_facts(after)                 # the new file is on disk already ...
    quiet = plans(after, facts)
    assert not any(p.changed for p in quiet.values())
    facts.contents[PENDING] = CELERYD + "\n"      # ... and the record says the worker still runs the old one
    steps = plans(after, facts)
    assert not steps["configs"].changed
    assert [a.summary for a in steps["supervisord"].actions] == ["reread and update (celery)"]
    assert steps["supervisord"].after_success == f"rm -f {PENDING}"
    assert steps["verify"].changed


def test_a_recorded_settings_change_restarts_the_programs():
    inventory = make_inventory()
    facts = deployed_facts(inventory)
    facts.contents[PENDING] = "/opt/arches/my_proj/my_proj/settings_local.py\n"
    steps = plans(inventory, facts)
    assert [a.summary for a in steps["supervisord"].actions] == [
        "restart celery, celerybeat (settings_local.py changed)"]


def test_a_recorded_removal_is_applied_with_reread_and_update():
    worker_only = make_inventory(hosts={"prod": {"roles": ["worker"]}, "mq": {"roles": ["broker", "beat"],
                                                                              "internal_address": "10.0.0.5"}})
    facts = deployed_facts(worker_only)
    facts.contents[PENDING] = "/etc/supervisor/my_proj-programs.d/my_proj-celerybeat.conf\n"
    steps = plans(worker_only, facts)
    assert [a.summary for a in steps["supervisord"].actions] == ["reread and update (stop and remove celerybeat)"]


def test_probe_reads_the_record(inventory):
    from tasks.deploy import probe_spec

    assert target_of(inventory).layout.pending_apply in probe_spec(target_of(inventory)).contents


def test_uploads_left_by_a_deploy_cut_off_long_ago_are_found_by_the_probe_and_removed(inventory):
    from tasks.deploy import probe_spec
    from tasks.probe import parse_probe, probe_script

    script = probe_script(probe_spec(target_of(inventory)))
    assert ("kv stale_tmp \"$(find /tmp -maxdepth 1 -name 'fabcelery-upload.*' -user \"${SUDO_USER:-root}\" "
            "-mmin +10 2>/dev/null | b64)\"") in script
    listed = "/tmp/fabcelery-upload.AbC123\n/tmp/fabcelery-upload.x/../../etc\n/tmp/x; reboot\n"
    facts = parse_probe(probe_output(stale_tmp=listed))
    assert len(facts.stale_tmp) == 3
    deployed = deployed_facts(inventory)
    object.__setattr__(deployed, "stale_tmp", facts.stale_tmp)
    system = plans(inventory, deployed)["system"]
    assert [(a.summary, a.script) for a in system.actions] == [
        ("remove 1 upload directory left by a deploy that was cut off", "rm -rf -- /tmp/fabcelery-upload.AbC123")]
    assert not plans(inventory, deployed)["configs"].changed
    assert not plans(inventory, deployed_facts(inventory))["system"].changed


# --- templates ------------------------------------------------------------------------------


def test_template_dirs_come_from_fabcelery_templates(tmp_path):
    assert template_dirs({}) == [TEMPLATES]
    assert template_dirs({"FABCELERY_TEMPLATES": str(tmp_path)}) == [tmp_path, TEMPLATES]
    with pytest.raises(InventoryError, match="FABCELERY_TEMPLATES=/no/such/dir: no such directory"):
        template_dirs({"FABCELERY_TEMPLATES": "/no/such/dir"})


def test_a_template_in_the_override_directory_wins_and_the_others_stay(tmp_path):
    (tmp_path / "celeryd.conf.j2").write_text("; mine for {{ name }}\n")
    inventory = make_inventory()
    steps = plans_with_templates(inventory, [tmp_path, TEMPLATES])
    files = {u.target: u.content for a in steps["configs"].actions for u in a.uploads}
    assert files[CELERYD] == "; mine for my_proj\n"
    assert "[supervisord]" in files["/etc/supervisor/my_proj-supervisord.conf"]


def plans_with_templates(inventory, templates):
    from .conftest import fresh_facts

    return {p.name: p for p in plan_deploy(target_of(inventory), fresh_facts(), PASSWORD,
                                            templates=templates)}


# --- what is shown ---------------------------------------------------------------------------


def test_a_diff_of_a_secret_file_shows_changed_lines_only_with_secrets_masked():
    old = "DEBUG = False\nSECRET_KEY = 'k-123'\nDB_PASSWORD = \"p-456\""    # no newline at the end
    new = old + "\n\n# BEGIN fabcelery managed block\nCELERY_BROKER_URL = 'redis://:u-789@mq:6379/0'\n"
    diff = file_diff("/opt/p/p/settings_local.py", old, new, secret=True)
    for secret in ("k-123", "p-456", "u-789"):
        assert secret not in diff
    assert "+CELERY_BROKER_URL = 'redis://:********@mq:6379/0'" in diff
    assert "DEBUG" not in diff          # no context lines around a secret file's change


def test_a_diff_of_a_redis_fragment_masks_requirepass():
    diff = file_diff("/etc/redis/fabcelery.conf", "bind 127.0.0.1\n", 'bind 127.0.0.1 10.0.0.5\nrequirepass "x1"\n',
                     secret=True)
    assert '+requirepass ********' in diff and "x1" not in diff


def test_a_diff_of_an_ordinary_file_has_context():
    diff = file_diff("/etc/x.conf", "a\nb\nc\n", "a\nB\nc\n", secret=False)
    assert diff.splitlines() == ["--- /etc/x.conf (on the host)", "+++ /etc/x.conf (after deploy)", "@@ -1,3 +1,3 @@",
                                 " a", "-b", "+B", " c"]


def test_the_reporter_masks_secrets_added_later_also_url_quoted():
    out = io.StringIO()
    reporter = Reporter(stream=out)
    reporter.add_secrets("p@ss/word", None, "")
    reporter.line("prod", "url redis://:p%40ss%2Fword@mq:6379/0 and p@ss/word")
    reporter.plain("again p@ss/word")
    assert "p@ss" not in out.getvalue() and "p%40ss" not in out.getvalue()
    assert out.getvalue().count("********") == 3


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prod", "deploy@10.0.0.5:2222", "web-1.example.org", "app_1:22"])
def test_good_destinations(name):
    check_destinations([name])


@pytest.mark.parametrize("name", ["a;b", "x\n", "host:0", "host:99999", "bad user@host", "$(reboot)", "-oProxy"])
def test_bad_destinations_are_refused(name):
    with pytest.raises(InventoryError, match="is not a host name or SSH destination"):
        check_destinations([name])


@pytest.mark.parametrize("key", [
    "project__name", "project__path", "project__virtualenv", "project__user", "project__group",
    "project__requirements", "celery__app", "versions__celery", "hosts__prod__address",
    "hosts__prod__internal_address", "hosts__prod__user",
])
@pytest.mark.parametrize("suffix", ["\n", ";reboot", " x", "$(id)", "`id`", "'"])
def test_a_value_that_would_break_a_config_file_or_a_shell_is_refused(key, suffix):
    good = {"project__name": "my_proj", "project__path": "/opt/p", "project__virtualenv": "/opt/v",
            "project__user": "arches", "project__group": "arches", "project__requirements": "req.txt",
            "celery__app": "my_proj.celery", "versions__celery": "5.7.0", "hosts__prod__address": "10.0.0.5",
            "hosts__prod__internal_address": "10.0.0.5", "hosts__prod__user": "deploy"}[key]
    make_inventory(**{key: good})   # the value itself is fine ...
    with pytest.raises(InventoryError) as error:
        make_inventory(**{key: good + suffix})   # ... and refused with what would break out of it
    assert repr(key.replace("__", ".")) in str(error.value)
    assert "\n" not in str(error.value)
