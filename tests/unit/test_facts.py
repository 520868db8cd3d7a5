"""Each fact of the probe (tasks/facts.py), asked of a temporary tree and answered by the real
probe script run with /bin/sh: the spec in, the Facts out. And a fact added in one class."""

import grp
import hashlib
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tasks.facts import FACTS, RabbitmqPing, RedisPing, SupervisorStatus
from tasks.facts_base import Ask, Give, PathState, QueueSurvey, RabbitQueue, SectionFact
from tasks.probe import ProbeSpec, probe_facts, probe_script, probe_types
from tasks.runner import Section, parse_sections

ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir(mode=0o750)
    (tmp_path / "dir").chmod(0o750)
    (tmp_path / "dir" / "a.conf").write_text("a\n")
    (tmp_path / "dir" / "b.conf").write_text("b\n")
    (tmp_path / "dir" / "c.txt").write_text("c\n")
    (tmp_path / "dir" / "sub.conf").mkdir()                  # a directory: not listed as a file
    (tmp_path / "file").write_text("hello\nKEEP me\n")
    (tmp_path / "file").chmod(0o640)
    (tmp_path / "odd name|x").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "live.pid").write_text(str(os.getpid()))
    (tmp_path / "dead.pid").write_text("2147483646")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "python").chmod(0o755)
    (venv / "lib" / "python3.13" / "site-packages" / "kombu-5.6.0.dist-info").mkdir(parents=True)
    # stand-ins for the broker's command-line tools, found on PATH as the real ones are
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "redis-cli").write_text('#!/bin/sh\n[ "$1 $2 $3" = "--user proj ping" ] && [ "$REDISCLI_AUTH" = pw ] '
                                    '&& echo PONG && exit 0\necho "NOAUTH Authentication required."\n')
    (bin_ / "rabbitmq-diagnostics").write_text("#!/bin/sh\nexit 69\n")
    (bin_ / "systemctl").write_text('#!/bin/sh\n[ "$*" = "is-active -q rabbitmq-server" ]\n')
    (bin_ / "rabbitmqctl").write_text(
        '#!/bin/sh\n[ "$*" = "-q list_queues -p proj name type durable auto_delete exclusive messages '
        '--formatter json" ] || exit 2\necho \'[{"name":"celery","type":"classic","durable":true,'
        '"auto_delete":false,"exclusive":false,"messages":3},\'\necho \' {"name":"celery@a.pidbox",'
        '"type":"classic","durable":false,"auto_delete":true,"exclusive":false,"messages":0}]\'\n')
    # a node's membership, as RabbitMQ writes it: names with a dash are quoted atoms
    (tmp_path / "cluster_nodes.config").write_text("{['rabbit@a-1',rabbit@b],['rabbit@a-1']}.\n")
    for tool in bin_.iterdir():
        tool.chmod(0o755)
    return tmp_path


def answer(spec, tree: Path, facts=FACTS, into=None):
    env = {**os.environ, "PATH": f"{tree / 'bin'}:{os.environ['PATH']}", "SUDO_USER": ME}
    out = subprocess.run(["/bin/sh", "-c", probe_script(spec, facts)], capture_output=True, text=True, check=True,
                         env=env).stdout
    return probe_facts(parse_sections(out), facts, into)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


LISTED = (RabbitQueue("celery", "classic", durable=True, transient=False, messages=3),
          RabbitQueue("celery@a.pidbox", "classic", durable=False, transient=True, messages=0))

# (spec's fields, from the tree) -> (Facts' field, what it holds, from the tree)
CASES = [
    (lambda t: {"paths": (f"{t}/dir", f"{t}/file", f"{t}/link", f"{t}/odd name|x", f"{t}/missing")}, "paths",
     lambda t: {f"{t}/dir": PathState("directory", ME, group(), "750"),
                f"{t}/file": PathState("file", ME, group(), "640"),
                f"{t}/link": PathState("link", ME, group(), "777"),
                f"{t}/odd name|x": PathState("file", ME, group(), "644")}),
    (lambda t: {"checksums": (f"{t}/file", f"{t}/missing")}, "checksums",
     lambda t: {f"{t}/file": sha("hello\nKEEP me\n")}),
    (lambda t: {"contents": (f"{t}/file", f"{t}/dir", f"{t}/missing")}, "contents",
     lambda t: {f"{t}/file": "hello\nKEEP me\n"}),
    # where the project user writes: read without following a link (the link reads as empty)
    (lambda t: {"user_contents": (f"{t}/file", f"{t}/link")}, "contents",
     lambda t: {f"{t}/file": "hello\nKEEP me\n", f"{t}/link": ""}),
    (lambda t: {"listings": ((f"{t}/dir", "*.conf"), (f"{t}/nodir", "*"))}, "listings",
     lambda t: {(f"{t}/dir", "*.conf"): (f"{t}/dir/a.conf", f"{t}/dir/b.conf")}),
    (lambda t: {"subdirs": (str(t),)}, "subdirs", lambda t: {str(t): ("bin", "dir", "venv")}),
    (lambda t: {"lines": ((f"{t}/file", "KEEP me"), (f"{t}/file", "KEEP"), (f"{t}/missing", "x"))}, "lines",
     lambda t: {(f"{t}/file", "KEEP me"): True}),
    (lambda t: {"supervisord_pidfile": f"{t}/live.pid"}, "supervisord_running", lambda t: True),
    (lambda t: {"supervisord_pidfile": f"{t}/dead.pid"}, "supervisord_running", lambda t: False),
    (lambda t: {"legacy_supervisord_pidfile": f"{t}/live.pid"}, "legacy_supervisord", lambda t: True),
    (lambda t: {"virtualenv": f"{t}/venv"}, "venv_python", lambda t: True),
    (lambda t: {"virtualenv": f"{t}/venv"}, "dists", lambda t: {"kombu": "5.6.0"}),
    (lambda t: {"virtualenv": f"{t}/novenv"}, "venv_python", lambda t: False),
    (lambda t: {"users": ("root", "no-such-user")}, "users",
     lambda t: {"root": {"name": "root", "uid": "0", "gid": "0", "home": "/root",
                         "shell": pwd.getpwnam("root").pw_shell}}),
    (lambda t: {"groups": ("root", "no-such-group")}, "groups", lambda t: {"root": "root:x:0:" + ",".join(
        grp.getgrnam("root").gr_mem)}),
    (lambda t: {"packages": ("coreutils", "surely-not-a-package")}, "packages", lambda t: {"coreutils": True}),
    (lambda t: {"supervisor_status": (f"{t}/file", "echo 'celery RUNNING pid 7'")}, "supervisor_status",
     lambda t: "celery RUNNING pid 7\n"),
    (lambda t: {"supervisor_status": (f"{t}/missing", "echo x")}, "supervisor_status", lambda t: None),
    (lambda t: {"redis_ping": True, "redis_user": "proj", "redis_auth": "REDISCLI_AUTH=pw; export REDISCLI_AUTH"},
     "redis_ping", lambda t: "PONG"),
    (lambda t: {"redis_ping": True, "redis_user": "other"}, "redis_ping", lambda t: "NOAUTH Authentication required."),
    (lambda t: {}, "redis_ping", lambda t: None),
    (lambda t: {"rabbitmq_ping": True}, "rabbitmq_ping", lambda t: False),
    # a node's queues, listed while its membership file lacks a member of its cluster
    (lambda t: {"rabbitmq_queues": QueueSurvey("proj", f"{t}/cluster_nodes.config", ("rabbit@b", "rabbit@c"))},
     "rabbitmq_queues", lambda t: LISTED),
    (lambda t: {"rabbitmq_queues": QueueSurvey("proj", f"{t}/cluster_nodes.config", ("rabbit@a",))},
     "rabbitmq_queues", lambda t: LISTED),             # rabbit@a-1 is not rabbit@a
    (lambda t: {"rabbitmq_queues": QueueSurvey("proj", f"{t}/no-such-file", ("rabbit@b",))},
     "rabbitmq_queues", lambda t: LISTED),
    (lambda t: {"rabbitmq_queues": QueueSurvey("proj", f"{t}/cluster_nodes.config", ("rabbit@a-1", "rabbit@b"))},
     "rabbitmq_queues", lambda t: None),               # in its whole cluster: not listed
    (lambda t: {"rabbitmq_queues": QueueSurvey("other", f"{t}/no-such-file", ("rabbit@b",))},
     "rabbitmq_queues", lambda t: None),               # rabbitmqctl failed (no such vhost)
    (lambda t: {}, "rabbitmq_queues", lambda t: None),
    (lambda t: {}, "rabbitmq_ping", lambda t: None),
]


@pytest.mark.parametrize("asked,field,found", CASES)
def test_each_fact_as_the_probe_script_finds_it_in_a_real_tree(tree, asked, field, found):
    facts = answer(ProbeSpec(**asked(tree)), tree)
    assert getattr(facts, field) == found(tree)
    assert ("coreutils" in facts.versions) == (field == "packages")


def test_stale_uploads_are_the_login_users_old_entries_of_tmp(tree):
    old, new = (Path(f"/tmp/fabcelery-facts-test-{age}-{os.getpid()}") for age in ("old", "new"))
    try:
        old.write_text("")
        new.write_text("")
        os.utime(old, (0, 0))
        facts = answer(ProbeSpec(stale_tmp=(f"fabcelery-facts-test-*-{os.getpid()}", 60)), tree)
        assert facts.stale_tmp == (str(old),)
    finally:
        old.unlink(missing_ok=True)
        new.unlink(missing_ok=True)


# fab status reads three of the probe's facts from its own scripts' sections
@pytest.mark.parametrize("fact,section,value", [
    (SupervisorStatus("supervisor"), Section(0, "celery RUNNING\n"), "celery RUNNING\n"),
    (SupervisorStatus("supervisor"), None, None),
    (RedisPing("redis"), Section(0, "PONG\n3\n0\n"), "PONG"),           # PING, then the queues' counts
    (RedisPing("redis"), Section(1, ""), ""),
    (RedisPing("redis"), None, None),
    (RabbitmqPing("rabbitmq"), Section(0, "[]"), True),
    (RabbitmqPing("rabbitmq"), Section(69, "Error"), False),
    (RabbitmqPing("rabbitmq"), None, None),
])
def test_status_reads_the_probes_facts_from_its_own_sections(fact, section, value):
    sections = {"end": Section(0, "")} | ({fact.section: section} if section else {})
    assert getattr(probe_facts(sections, (fact,)), fact.field) == value


class Uptime(SectionFact):
    """A fact added in one class: how long the machine has run, when asked."""

    asks = {"uptime": Ask("bool", False)}
    gives = {"uptime": Give("float | None", None)}
    section = "uptime"

    def script(self, spec) -> list[str]:
        return ['kv uptime "$(cut -d" " -f1 /proc/uptime | b64)"'] if spec.uptime else []

    def value(self, section):
        return float(section.text) if section else None


def test_a_fact_added_in_one_class_is_asked_batched_and_read(tree):
    facts = (*FACTS, Uptime())
    spec_type, facts_type = probe_types(facts)
    spec = spec_type(uptime=True).union(spec_type(paths=(str(tree / "file"),)))
    found = answer(spec, tree, facts, facts_type)
    assert found.uptime > 0 and found.paths[str(tree / "file")].kind == "file"
    assert answer(spec_type(), tree, facts, facts_type).uptime is None
