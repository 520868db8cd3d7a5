"""A run's connections share what they can (tasks/connections.py): the ssh_config parsed and
each host looked up once, known_hosts read once, one copy of the configuration, one
keepalive thread; and each connection sees exactly what it saw with its own."""

from __future__ import annotations

import base64
import getpass
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest
from fabric import Config
from paramiko.hostkeys import HostKeys

from tasks.connections import RunSSHConfig, Watchdog, shared_ssh
from tasks.host_errors import HostError
from tasks.host_keys import AcceptNewPolicy
from tasks.inventory import HostSpec
from tasks.remote import Remote

HOSTS = [f"h{i}" for i in range(1, 101)]


def fleet_config(tmp_path: Path, extra: str = "") -> Path:
    """An ssh_config with a block per host, as a fleet's (and testhost's) is written."""
    path = tmp_path / "ssh_config"
    blocks = [f"Host {name}\n    HostName 127.0.0.{i}\n    Port {2200 + i}\n    User deploy\n"
              f"    IdentityFile {tmp_path}/id_{name}\n    UserKnownHostsFile {tmp_path}/known_hosts\n"
              for i, name in enumerate(HOSTS, 1)]
    path.write_text(extra + "\n".join(blocks))
    return path


def run_config(path: Path) -> Config:
    """What `fab -S PATH` hands the tasks: a Config with that ssh_config loaded (once)."""
    config = Config(runtime_ssh_path=str(path))
    assert len(config.base_ssh_config._config) == path.read_text().count("\nHost ") + 2
    return config


def without_login_variables(monkeypatch) -> list[str]:
    """No USER/LOGNAME (cron, systemd): getpass.getuser() asks the passwd file; count its calls."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    calls: list[str] = []
    real = getpass.getuser

    def counted():
        calls.append("getuser")
        return real()

    monkeypatch.setattr(getpass, "getuser", counted)
    return calls


def test_a_hundred_hosts_are_looked_up_once_each_and_the_configuration_is_copied_once(tmp_path, monkeypatch):
    config = run_config(fleet_config(tmp_path))
    rules = len(config.base_ssh_config._config)
    clones = []
    real_clone = Config.clone
    monkeypatch.setattr(Config, "clone", lambda self, *a, **kw: clones.append(1) or real_clone(self, *a, **kw))
    remotes = [Remote(HostSpec(name), config) for name in HOSTS]
    remotes.append(Remote(HostSpec("h7"), config))            # a host asked for again: no second lookup
    shared = shared_ssh(config)
    assert shared.ssh_config.lookups == len(HOSTS)
    assert len(clones) == 1
    # Fabric's clone parses the ssh_config again into the original, once per clone: once here
    assert len(config.base_ssh_config._config) <= 2 * rules
    for i, remote in enumerate(remotes[:-1], 1):
        assert (remote.conn.host, remote.conn.port, remote.conn.user) == (f"127.0.0.{i}", 2200 + i, "deploy")
        assert remote.conn.connect_kwargs["key_filename"] == [f"{tmp_path}/id_h{i}"]
    assert remotes[-1].conn.port == 2207
    assert remotes[-1].conn.ssh_config is not remotes[6].conn.ssh_config   # each its own copy


def test_each_connection_has_its_own_connect_kwargs_and_the_shared_configuration_is_not_written(tmp_path):
    config = run_config(fleet_config(tmp_path))
    config.connect_kwargs.key_filename = ["/from/fabric.yaml"]
    config.connect_kwargs.passphrase = "x"
    a, b = Remote(HostSpec("h1"), config), Remote(HostSpec("h2"), config)
    # as Fabric merges them: the configuration's keys, then the host's IdentityFile
    assert a.conn.connect_kwargs["key_filename"] == ["/from/fabric.yaml", f"{tmp_path}/id_h1"]
    assert b.conn.connect_kwargs["key_filename"] == ["/from/fabric.yaml", f"{tmp_path}/id_h2"]
    assert a.conn.connect_kwargs["passphrase"] == "x"
    assert a.conn.connect_kwargs["banner_timeout"] == a.bounds.connect
    assert shared_ssh(config).config.connect_kwargs == {"key_filename": ["/from/fabric.yaml"], "passphrase": "x"}


def test_making_a_connection_does_not_merge_the_shared_configuration_again(tmp_path):
    # a merge starts from an empty dict: a host reading the configuration meanwhile (its open()
    # reads `authentication`) would find nothing there
    config = run_config(fleet_config(tmp_path))
    first = Remote(HostSpec("h1"), config)
    shared = shared_ssh(config).config
    merged = shared._config
    second = Remote(HostSpec("h2"), config)
    assert shared._config is merged and shared._modifications == {}
    assert first.conn.inline_ssh_env == second.conn.inline_ssh_env == shared.inline_ssh_env


def test_host_blocks_cost_no_passwd_lookup(tmp_path, monkeypatch):
    calls = without_login_variables(monkeypatch)
    config = run_config(fleet_config(tmp_path))
    before = len(calls)          # Fabric's Config asks for its default user when it is made
    for name in HOSTS:
        Remote(HostSpec(name), config)
    assert len(calls) - before <= 1       # and so does the run's copy of it, once
    # paramiko's own matching asks for every block it passes over
    plain = paramiko.SSHConfig.from_path(str(tmp_path / "ssh_config"))
    plain.lookup("h50")
    assert len(calls) >= 49


def test_a_match_block_or_a_percent_token_still_asks_once_per_host(tmp_path, monkeypatch):
    calls = without_login_variables(monkeypatch)
    config = run_config(fleet_config(tmp_path, extra="Match localuser nobody-here\n    Port 9\n\n"))
    shared_ssh(config)
    before = len(calls)
    for name in HOSTS[:10]:
        assert Remote(HostSpec(name), config).conn.port != 9
    assert len(calls) - before == 2 * 10      # paramiko matches twice per lookup (its first and final pass)


SSH_CONFIGS = {
    "hosts and a default": "Host a\n HostName 10.0.0.1\n User u\nHost *\n Port 2222\n",
    "negation": "Host * !b\n User everyone\nHost b\n User bee\n",
    "tokens": "Host t*\n HostName %h.example\n IdentityFile ~/.ssh/%h-%r_%u\n IdentityFile %d/k\n"
              " ControlPath /tmp/%C\n ProxyCommand nc %h %p\n",
    "home only": "Host *\n IdentityFile ~/.ssh/key\n UserKnownHostsFile ~/.ssh/kh /etc/kh\n",
    "match user and host": "Match user deploy host 10.*\n Port 2\nHost m\n HostName 10.1.1.1\n User deploy\n",
    "match localuser, originalhost, all": f"Match localuser {getpass.getuser()}\n Port 3\n"
                                          "Match originalhost o*\n User oo\nMatch all\n Compression yes\n",
    "match final": "Host f\n HostName f.example\nMatch final host f.example\n User fin\n",
    "quoted and repeated": 'Host q\n IdentityFile "/a b"\n IdentityFile /c\nHost *\n IdentityFile /d\n',
}


@pytest.mark.parametrize("name", SSH_CONFIGS)
@pytest.mark.parametrize("target", ["a", "b", "t1", "m", "o1", "f", "q", "zz"])
def test_lookups_answer_as_paramikos_own(name, target, monkeypatch):
    for variable in ("LOGNAME", "USER"):
        monkeypatch.delenv(variable, raising=False)
    plain = paramiko.SSHConfig.from_text(SSH_CONFIGS[name])
    ours = RunSSHConfig(paramiko.SSHConfig.from_text(SSH_CONFIGS[name])._config)
    assert ours.lookup(target) == plain.lookup(target)
    assert ours.lookup(target) == plain.lookup(target)      # kept, and each answer its own copy


# --- known_hosts ------------------------------------------------------------------------------


def host_key(tmp_path: Path, name: str, kind: str = "ed25519") -> tuple[paramiko.PKey, str]:
    path = tmp_path / f"key-{name}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True)
    keytype, data = path.with_suffix(".pub").read_text().split()[:2]
    return paramiko.PKey.from_type_string(keytype, base64.b64decode(data)), f"{keytype} {data}"


def test_known_hosts_is_read_once_per_run_and_each_host_gets_what_loading_it_gave(tmp_path, monkeypatch):
    ed, ed_line = host_key(tmp_path, "ed")
    ed2, ed2_line = host_key(tmp_path, "ed2")
    ec, ec_line = host_key(tmp_path, "ec", "ecdsa")
    known = tmp_path / "known_hosts"
    other = tmp_path / "known_hosts2"
    # h1: ecdsa first, then ed25519 (both files); h2 hashed; h3 nowhere
    known.write_text(f"[127.0.0.1]:2201 {ec_line}\n[127.0.0.1]:2201 {ed_line}\n"
                     + HostKeys().hash_host("[127.0.0.2]:2202") + f" {ed2_line}\n")
    other.write_text(f"[127.0.0.1]:2201 {ed2_line}\n")
    ssh_config = fleet_config(tmp_path)
    ssh_config.write_text(ssh_config.read_text().replace(f"UserKnownHostsFile {known}",
                                                         f"UserKnownHostsFile {known} {other}"))
    config = run_config(ssh_config)
    reads = []
    real_load = HostKeys.load
    monkeypatch.setattr(HostKeys, "load", lambda self, f: reads.append(f) or real_load(self, f))
    remotes = [Remote(HostSpec(name), config) for name in HOSTS[:50]]
    for remote in remotes:
        remote._check_host_keys(remote.conn)
    assert sorted(reads) == sorted({str(known), str(other)} | {p for p in ("/etc/ssh/ssh_known_hosts",
                                                                           "/etc/ssh/ssh_known_hosts2")
                                                               if Path(p).is_file()})
    reference = HostKeys()
    for path in (known, other):
        real_load(reference, str(path))
    for remote, name in zip(remotes[:3], ("[127.0.0.1]:2201", "[127.0.0.2]:2202", "[127.0.0.3]:2203"),
                            strict=True):
        ours, theirs = remote.conn.client.get_host_keys().lookup(name), reference.lookup(name)
        if theirs is None:
            assert ours is None
            continue
        # what paramiko's client reads: the first type (asked of the server first), each type's key
        assert ours.keys()[0] == theirs.keys()[0]
        assert {t: ours[t] for t in ours.keys()} == {t: theirs[t] for t in theirs.keys()}
    assert remotes[0].conn.client.get_host_keys().lookup("[127.0.0.1]:2201")["ssh-ed25519"] == ed
    assert remotes[0].conn.client.get_host_keys().lookup("[127.0.0.1]:2201").keys()[0] == ec.get_name()
    assert remotes[1].conn.client.get_host_keys().lookup("[127.0.0.2]:2202")["ssh-ed25519"] == ed2


def test_an_unreadable_known_hosts_fails_every_host_that_needs_it(tmp_path):
    (tmp_path / "known_hosts").write_text("[127.0.0.1]:2201 ssh-ed25519 not-base64!!\n")
    config = run_config(fleet_config(tmp_path))
    for name in HOSTS[:3]:
        remote = Remote(HostSpec(name), config)
        with pytest.raises(HostError, match="cannot read the known hosts file"):
            remote._check_host_keys(remote.conn)


def test_a_key_accepted_in_the_run_is_known_to_its_later_connections(tmp_path):
    key, _ = host_key(tmp_path, "new")
    known = tmp_path / "known_hosts"
    config = run_config(fleet_config(tmp_path))
    first = Remote(HostSpec("h1"), config, accept_new_host_keys=True)
    first._check_host_keys(first.conn)
    policy = first.conn.client._policy
    assert isinstance(policy, AcceptNewPolicy)
    policy.missing_host_key(first.conn.client, "[127.0.0.1]:2201", key)
    again = Remote(HostSpec("h1"), config, accept_new_host_keys=True)
    again._check_host_keys(again.conn)
    assert again.conn.client.get_host_keys().lookup("[127.0.0.1]:2201")["ssh-ed25519"] == key
    assert known.read_text().count("\n") == 1


# --- one keepalive thread ---------------------------------------------------------------------


def keepalive_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fabcelery-keepalive")


def test_one_thread_checks_every_connection_and_ends_when_none_is_left():
    watchdog = Watchdog()
    seen: dict[int, int] = {}
    stop = threading.Event()

    def check_of(n: int):
        def check():
            seen[n] = seen.get(n, 0) + 1
            return not (n == 0 or stop.is_set())     # number 0 asks to be dropped at once
        return check

    for n in range(100):
        watchdog.watch(n, check_of(n), 0.05)
    assert keepalive_threads() == 1
    time.sleep(0.3)
    assert seen[0] == 1 and all(seen[n] >= 2 for n in range(1, 100))
    assert watchdog.watching == 99
    watchdog.forget(1)
    stop.set()
    deadline = time.monotonic() + 5
    while keepalive_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watchdog.watching == 0 and keepalive_threads() == 0
    watchdog.watch("again", lambda: False, 0.05)     # and starts again for the next connection
    assert keepalive_threads() == 1


def test_a_check_that_raises_is_dropped_and_the_others_go_on():
    watchdog = Watchdog()
    counts = {"ok": 0}

    def bad():
        raise OSError("gone")

    def good():
        counts["ok"] += 1
        return counts["ok"] < 4

    watchdog.watch("bad", bad, 0.02)
    watchdog.watch("good", good, 0.02)
    deadline = time.monotonic() + 5
    while watchdog.watching and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counts["ok"] == 4 and watchdog.watching == 0
