"""The resource kinds and their differ, as tables: facts in, actions (or the no-op reason) out.

Each row: a resource, the facts a probe found, then the summaries of the actions the
differ plans, or the reason it plans none ("noop: ..."), or the refusal ("refused: ...").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from tasks.checksum import sha256
from tasks.erlang import RABBITMQ_INETRC
from tasks.file_edits import Line, ManagedBlock, remove_lines_script, without_block
from tasks.plan import Action, Upload
from tasks.probe import Facts, PathState, ProbeSpec
from tasks.resources import Custom, Diff, Refused, doing, needs_of, nothing, plan_resources
from tasks.resources_broker import BrokerFiles, BrokerService, KeptSecret, PeersReread
from tasks.resources_files import Directory, File, Installed, Rendered
from tasks.resources_os import Group, Packages
from tasks.resources_python import PipInstall, Virtualenv
from tasks.resources_systemd import Unit
from tasks.shell import cmd

DIR = PathState("directory", "root", "root", "755")
USER_DIR = PathState("directory", "arches", "arches", "750")
LOG = PathState("file", "arches", "arches", "640")
ROOT_FILE = PathState("file", "root", "root", "644")
LINK = PathState("link", "arches", "arches", "777")
VENV = "/opt/v"
PIP = PipInstall(VENV, "arches", "/home/arches", ("celery==5.6.3", "-r /p/req.txt"), "stamp", "/s",
                 requires=("celery",), requirements="/p/req.txt", key="project.requirements")



ENABLED = {"x.service": {"enabled": "enabled", "active": "inactive"}}
SETTINGS = "/p/settings_local.py"
BLOCK = ManagedBlock(SETTINGS, "# BEGIN", "# END", present=True, block="# BEGIN\nX = 1\n# END\n", group="www")
BLOCKED = "A = 1\n\n# BEGIN\nX = 1\n# END\n"


class StubBroker:
    """A broker kind (tasks/broker_kind.py) as far as BrokerService asks it: a restart is owed
    while /owed is there."""

    name, unit = "redis-server", "redis-server.service"

    def answers(self, facts: Facts) -> bool:
        return facts.redis_ping == "PONG"

    def config_actions(self, facts: Facts, node_files: bool) -> tuple[list[Action], bool]:
        return [], "/owed" in facts.contents

    def after_restart(self) -> str:
        return ""

    def wait_script(self) -> str:
        return ":"


BROKER_FILES = BrokerFiles((Upload("/f", "a"), Upload("/n", "b")), epmd=("/n",))
BROKER_UP = {"redis-server.service": {"enabled": "enabled", "active": "active"}}
BROKER_FILES_SAME = {"/f": sha256("a"), "/n": sha256("b")}
PEER_FILES = BrokerFiles((Upload("/f", "a"), Upload(RABBITMQ_INETRC, "peers")))
PEERS = PeersReread(PEER_FILES, "rabbit@mq1", "redis-server.service")
SERVICE = BrokerService(StubBroker(), BROKER_FILES, None, False)


def outcome(resource, facts: Facts) -> list[str] | str:
    try:
        diff = resource.diff(facts)
    except Refused as exc:
        return "refused: " + str(exc).split(":")[0]
    return [a.summary for a in diff.actions] if diff.actions else "noop: " + diff.noop


TABLE = [
    # --- packages
    (Packages(("redis-server", "logrotate")), Facts(packages={"logrotate": True}), ["install redis-server"]),
    (Packages(("redis-server",)), Facts(packages={"redis-server": True}), "noop: redis-server installed"),
    (Packages(("redis-server", "logrotate"), present=False), Facts(packages={"redis-server": True}),
     ["purge redis-server"]),
    (Packages(("redis-server",), present=False), Facts(), "noop: redis-server not installed"),
    (Packages((), present=False), Facts(), "noop: no package not installed"),
    # --- groups and users
    (Group("arches"), Facts(), ["create group arches"]),
    (Group("arches"), Facts(groups={"arches": "arches:x:999:"}), "noop: group arches exists"),
    (Group("arches", present=False), Facts(groups={"arches": "arches:x:999:"}), ["remove group arches"]),
    # --- directories
    (Directory("/var/lib/x", "arches", "arches", "750"), Facts(), ["create /var/lib/x"]),
    (Directory("/var/lib/x", "arches", "arches", "750"), Facts(paths={"/var/lib/x": USER_DIR}),
     "noop: /var/lib/x arches:arches 750"),
    (Directory("/var/lib/x", "arches", "arches", "750"), Facts(paths={"/var/lib/x": DIR}),
     ["fix owner/mode of /var/lib/x (root:root 755 -> arches:arches 750)"]),
    (Directory("/var/lib/x"), Facts(paths={"/var/lib/x": LINK}), "refused: /var/lib/x is a symbolic link"),
    (Directory("/var/lib/x"), Facts(paths={"/var/lib/x": ROOT_FILE}), "refused: /var/lib/x is not a directory"),
    (Directory("/var/lib/x", present=False), Facts(paths={"/var/lib/x": USER_DIR}), ["remove /var/lib/x"]),
    (Directory("/var/lib/x", present=False), Facts(), "noop: /var/lib/x absent"),
    (Directory("/var/lib/x", present=False), Facts(paths={"/var/lib/x": LINK}), ["remove the link /var/lib/x"]),
    (Directory("/etc/supervisor", present=False, shared=True), Facts(paths={"/etc/supervisor": DIR}),
     ["remove /etc/supervisor if empty"]),
    # --- files
    (File("/var/log/x.log", "arches", "arches", "640"), Facts(), ["create /var/log/x.log"]),
    (File("/var/log/x.log", "arches", "arches", "640"), Facts(paths={"/var/log/x.log": LOG}),
     "noop: /var/log/x.log arches:arches 640"),
    (File("/var/log/x.log", "arches", "arches", "640"), Facts(paths={"/var/log/x.log": ROOT_FILE}),
     ["fix owner/mode of /var/log/x.log (root:root 644 -> arches:arches 640)"]),
    (File("/var/log/x.log"), Facts(paths={"/var/log/x.log": LINK}), "refused: /var/log/x.log is a symbolic link"),
    (File("/etc/x.conf", content="a = 1\n"), Facts(), ["install /etc/x.conf"]),
    (File("/etc/x.conf", content="a = 1\n"),
     Facts(paths={"/etc/x.conf": ROOT_FILE},
           checksums={"/etc/x.conf": "3d5a2c1c0c4b7e1f4d5e5f0f0b0b3a3f9f0e6e4c2a5c0b8f2d0e6a1b5c7d9e1f"}),
     ["install /etc/x.conf"]),
    (File("/etc/x.conf", present=False), Facts(paths={"/etc/x.conf": ROOT_FILE}), ["remove /etc/x.conf"]),
    (File("/etc/x.conf", present=False), Facts(paths={"/etc/x.conf": LINK}), ["remove /etc/x.conf"]),
    (File("/etc/x.conf", present=False), Facts(), "noop: /etc/x.conf absent"),
    (File("/etc/x.conf", present=False), Facts(paths={"/etc/x.conf": DIR}), "refused: /etc/x.conf is not a file"),
    # --- lines
    (Line("/etc/redis/redis.conf", "include /etc/redis/x.conf", "# ours"), Facts(),
     ["add 'include /etc/redis/x.conf' to /etc/redis/redis.conf"]),
    (Line("/etc/redis/redis.conf", "include /etc/redis/x.conf"),
     Facts(lines={("/etc/redis/redis.conf", "include /etc/redis/x.conf"): True}),
     "noop: /etc/redis/redis.conf has 'include /etc/redis/x.conf'"),
    (Line("/etc/redis/redis.conf", "include /etc/redis/x.conf", "# ours", present=False),
     Facts(lines={("/etc/redis/redis.conf", "include /etc/redis/x.conf"): True}),
     ["remove 'include /etc/redis/x.conf' from /etc/redis/redis.conf"]),
    (Line("/etc/redis/redis.conf", "include /etc/redis/x.conf", "# ours", present=False), Facts(),
     "noop: /etc/redis/redis.conf has no 'include /etc/redis/x.conf'"),
    # --- units
    (Unit("x.service", "/etc/systemd/system/x.service", present=False),
     Facts(systemd=True, paths={"/etc/systemd/system/x.service": ROOT_FILE},
           services={"x.service": {"active": "active", "enabled": "enabled"}}), ["stop and remove x.service"]),
    (Unit("x.service", "/etc/systemd/system/x.service", present=False),
     Facts(systemd=True, services={"x.service": {"active": "inactive", "enabled": "not-found"}}),
     "noop: x.service absent"),
    # --- a virtualenv, and what pip installs into it
    (Virtualenv(VENV, "arches", "arches", "/home/arches"), Facts(), ["create virtualenv /opt/v"]),
    (Virtualenv(VENV, "arches", "arches", "/home/arches"), Facts(venv_python=True), "noop: virtualenv /opt/v there"),
    (Virtualenv(VENV, record="/r", present=False), Facts(paths={VENV: USER_DIR}, contents={"/r": "/opt/v\n"}),
     ["remove the virtualenv /opt/v (fabcelery created it)"]),
    (Virtualenv(VENV, record="/r", present=False), Facts(paths={VENV: USER_DIR}),
     "noop: /opt/v: not created by fabcelery, kept"),
    (Virtualenv(VENV, record="/r", present=False), Facts(paths={VENV: LINK}, contents={"/r": "/opt/v\n"}),
     "noop: /opt/v is not a directory, kept"),
    (PIP, Facts(contents={"/p/req.txt": "x"}), ["pip install celery==5.6.3 -r /p/req.txt"]),     # no virtualenv yet
    (PIP, Facts(venv_python=True, contents={"/s": "old", "/p/req.txt": "x"}, dists={"celery": "5.6.3"}),
     ["pip install celery==5.6.3 -r /p/req.txt"]),                                    # the stamp changed
    (PIP, Facts(venv_python=True, contents={"/s": "stamp", "/p/req.txt": "x"}, dists={}),
     ["pip install celery==5.6.3 -r /p/req.txt"]),                                    # celery went missing
    (PIP, Facts(venv_python=True, contents={"/s": "stamp", "/p/req.txt": "x"}, dists={"celery": "5.6.3"}),
     "noop: requirements unchanged since the last install"),
    (PIP, Facts(venv_python=True, paths={"/p/req.txt": LINK}), "refused: /p/req.txt (project.requirements) is a "
                                                              "symbolic link"),
    (PIP, Facts(venv_python=True), "refused: /p/req.txt (project.requirements) is not on the host"),
    # --- a unit, present: its file is the configs step's; enabled, and systemd told when the file changed
    (Unit("x.service", "/x", present=True), Facts(systemd=True), ["enable x.service (starts at boot)"]),
    (Unit("x.service", "/x", present=True, reload=True), Facts(systemd=True, services=ENABLED),
     ["systemctl daemon-reload"]),
    (Unit("x.service", "/x", present=True), Facts(systemd=True, services=ENABLED), "noop: x.service enabled"),
    (Unit("x.service", "/x", present=True, reload=True), Facts(), "noop: no systemd: x.service is not used"),
    # --- the managed block, present: the file keeps its owner and every other line, gets the group and 0640
    (BLOCK, Facts(), ["install settings_local.py"]),
    (BLOCK, Facts(paths={SETTINGS: PathState("file", "arches", "arches", "644")}, contents={SETTINGS: "A = 1\n"}),
     ["install settings_local.py"]),
    (BLOCK, Facts(paths={SETTINGS: PathState("file", "arches", "www", "640")}, contents={SETTINGS: BLOCKED}),
     "noop: 1 file as they should be"),
    (BLOCK, Facts(paths={SETTINGS: PathState("file", "arches", "arches", "644")}, contents={SETTINGS: BLOCKED}),
     [f"fix owner/mode of {SETTINGS} (arches:arches 644 -> arches:www 640)"]),
    (BLOCK, Facts(paths={SETTINGS: LINK}), "refused: /p/settings_local.py is a symbolic link"),
    # --- rendered files, installed together; the unchanged ones' owner and mode put right
    (Installed((Rendered("/e/a.conf", "a"), Rendered("/e/b.conf", "b", mode="600"), BLOCK)),
     Facts(paths={"/e/b.conf": ROOT_FILE, SETTINGS: PathState("file", "arches", "www", "640")},
           checksums={"/e/b.conf": sha256("b")}, contents={SETTINGS: BLOCKED}),
     ["install a.conf", "fix owner/mode of /e/b.conf (root:root 644 -> root:root 600)"]),
    (Rendered("/e/a.conf", "a"), Facts(paths={"/e/a.conf": LINK}, checksums={"/e/a.conf": sha256("a")}),
     "refused: /e/a.conf is a symbolic link"),
    # --- the broker step's
    (KeptSecret("/k", "pw", "the broker password"), Facts(), ["keep the broker password in /k (0600, root)"]),
    (KeptSecret("/k", "pw", "the broker password"), Facts(checksums={"/k": sha256("pw")}),
     "noop: the broker password kept in /k"),
    (BROKER_FILES, Facts(), ["install /f, /n"]),                           # together: validated, then renamed
    (BROKER_FILES, Facts(checksums={"/f": sha256("a")}), ["install /n"]),
    (BROKER_FILES, Facts(checksums=BROKER_FILES_SAME), "noop: the broker's config files are up to date"),
    (PEERS, Facts(systemd=True, services=BROKER_UP, checksums={"/f": sha256("a")}),
     ["rabbit@mq1 reads the cluster's names anew from /etc/rabbitmq/fabcelery.inetrc"]),
    (PEERS, Facts(systemd=True, services=BROKER_UP), "noop: rabbit@mq1's peers are as it read them"),  # /f too
    (PEERS, Facts(systemd=True, checksums={"/f": sha256("a")}), "noop: rabbit@mq1's peers are as it read them"),
    (SERVICE, Facts(systemd=True, services=BROKER_UP, checksums=BROKER_FILES_SAME, redis_ping="PONG"),
     "noop: redis-server enabled, running and answering"),
    (SERVICE, Facts(systemd=True, services=BROKER_UP, checksums={"/n": sha256("b")}, redis_ping="PONG"),
     ["restart and check redis-server.service"]),                       # what it reads changed
    (SERVICE, Facts(systemd=True, services=BROKER_UP, checksums=BROKER_FILES_SAME, redis_ping="PONG",
                    contents={"/owed": ""}), ["restart and check redis-server.service"]),
    (SERVICE, Facts(systemd=True, services={"redis-server.service": {"enabled": "enabled", "active": "failed"}},
                    checksums=BROKER_FILES_SAME), ["start and check redis-server.service"]),
    (SERVICE, Facts(checksums=BROKER_FILES_SAME), ["start and check redis-server.service"]),   # no systemd, silent
    (SERVICE, Facts(checksums=BROKER_FILES_SAME, redis_ping="PONG"),
     "noop: redis-server enabled, running and answering"),
    # a cluster node whose peers alone changed: read anew, no restart
    (BrokerService(StubBroker(), PEER_FILES, PEERS, True),
     Facts(systemd=True, services=BROKER_UP, checksums={"/f": sha256("a")}, redis_ping="PONG"),
     "noop: redis-server enabled, running and answering"),
]


def test_a_broker_restart_takes_epmd_anew_when_its_drop_in_changed():
    facts = Facts(systemd=True, services=BROKER_UP, checksums={"/f": sha256("a")}, redis_ping="PONG")
    assert "epmd.socket" in SERVICE.diff(facts).actions[0].script
    assert "epmd.socket" not in SERVICE.diff(replace(facts, checksums={"/n": sha256("b")})).actions[0].script


@pytest.mark.parametrize("resource,facts,expected", TABLE)
def test_the_differ(resource, facts, expected):
    assert outcome(resource, facts) == expected


def test_a_purge_checks_first_that_apt_would_take_nothing_else():
    script = Packages(("redis-server", "logrotate"), present=False).diff(Facts(
        packages={"redis-server": True, "logrotate": True})).actions[0].script
    # apt's simulation must name exactly these packages, else nothing is removed
    assert "apt-get -s -qq purge redis-server logrotate" in script
    assert "'logrotate redis-server '" in script
    assert script.index("apt-get -s") < script.index("apt_get purge")


def test_installed_packages_are_recorded_for_a_later_purge():
    script = Packages(("redis-server",), record="/var/lib/fabcelery/p/installed-packages").diff(Facts()) \
        .actions[0].script
    assert script.rstrip().endswith("redis-server >> /var/lib/fabcelery/p/installed-packages")


def test_a_line_is_taken_out_with_its_comment_and_the_blank_line_before_them(tmp_path):
    import subprocess

    conf = tmp_path / "r.conf"
    package = "# Redis\nbind 127.0.0.1\n\nport 6379\n"
    # two projects' deploys appended their blocks; the second one's goes
    conf.write_text(package + "\n# ours\nuser default off\n\n# mine\ninclude x\n")
    facts = Facts(lines={(str(conf), "include x"): True, (str(conf), "# mine"): True})
    script = Line(str(conf), "include x", "# mine", present=False).diff(facts).actions[0].script
    subprocess.run(["sh", "-c", script], check=True)
    assert conf.read_text() == package + "\n# ours\nuser default off\n"
    # then the other: the file is the package's again, byte for byte
    facts = Facts(lines={(str(conf), "user default off"): True, (str(conf), "# ours"): True})
    subprocess.run(["sh", "-c", Line(str(conf), "user default off", "# ours", present=False).diff(facts)
                    .actions[0].script], check=True)
    assert conf.read_text() == package
    assert "cp -p" in script      # owner and mode kept: the new file is a copy before it is rewritten


# remove_lines_script, the one way lines leave a system's file. Its callers: Line(present=False)
# (undeploy: a project's include in redis.conf, RabbitMQ's env include) and the Redis step's
# removal of an earlier fabcelery's shared include (redis_broker.redis_conf_actions).
OLD_COMMENT = "# Added by fabcelery: the settings in this file win over the ones above."
OLD_INCLUDE = "include /etc/redis/fabcelery.conf"


@pytest.mark.parametrize("before,lines,after", [
    # Line: a deploy's lines, appended after a blank line, go with that blank line
    ("a\n\n# c\nline\n", ["line", "# c"], "a\n"),
    # the Redis step's case: the earlier fabcelery's include and comment, between other lines
    (f"bind 127.0.0.1\n\n{OLD_COMMENT}\n{OLD_INCLUDE}\nuser default off\n", [OLD_INCLUDE, OLD_COMMENT],
     "bind 127.0.0.1\nuser default off\n"),
    # only the include was left (its comment removed by hand): the blank line before it goes too
    (f"bind 127.0.0.1\n\n{OLD_INCLUDE}\n", [OLD_INCLUDE, OLD_COMMENT], "bind 127.0.0.1\n"),
    # blank lines that are not right before a removed line stay, and so does a trailing one
    ("a\n\nb\n\n", ["x"], "a\n\nb\n\n"),
    ("line\n\na\n", ["line"], "\na\n"),
    # exact lines only: not a part of a line, not a regular expression, backslashes as they are
    ("include x.conf\ninclude x\ninclude xyconf\nsay \\n\n", ["include x", "include x.conf", "say \\n"],
     "include xyconf\n"),
    # every line removed: the file is empty
    ("\nline\n", ["line"], ""),
])
def test_lines_removed_from_a_file_take_the_blank_line_before_them_and_keep_the_rest(tmp_path, before, lines,
                                                                                      after):
    import stat
    import subprocess

    conf = tmp_path / "r.conf"
    conf.write_text(before)
    conf.chmod(0o640)
    subprocess.run(["sh", "-c", remove_lines_script(str(conf), lines)], check=True)
    assert conf.read_text() == after
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["r.conf"]


@pytest.mark.parametrize("text,expected", [
    ("A = 1\n\n# BEGIN b\nX = 2\n# END b\n", "A = 1\n"),
    ("A = 1\n\n# BEGIN b\nX = 2\n# END b\nB = 3\n", "A = 1\nB = 3\n"),
    ("# BEGIN b\nX = 2\n# END b\n", ""),
    ("A = 1\n", None),
])
def test_without_block(text, expected):
    assert without_block(text, "# BEGIN b", "# END b") == expected


def test_a_managed_block_goes_and_the_rest_of_the_file_stays_written_never_through_a_link():
    path = "/opt/p/p/settings_local.py"
    text = "SECRET = 'x'\n\n# BEGIN b\nURL = 'redis://...'\n# END b\n"
    facts = Facts(paths={path: PathState("file", "arches", "arches", "640")}, contents={path: text})
    action = ManagedBlock(path, "# BEGIN b", "# END b").diff(facts).actions[0]
    (upload,) = action.uploads
    assert upload == Upload(path, "SECRET = 'x'\n", "arches", "arches", "0640", old_content=text, secret=True,
                            nofollow=True)
    # a file that held the block only goes; a link is refused, as the deploy refuses it
    only = Facts(paths=facts.paths, contents={path: "# BEGIN b\nURL = 1\n# END b\n"})
    assert ManagedBlock(path, "# BEGIN b", "# END b").diff(only).actions[0].script == f"rm -f -- {path}"
    with pytest.raises(Refused):
        ManagedBlock(path, "# BEGIN b", "# END b").diff(Facts(paths={path: LINK}))


def test_the_probe_asks_for_the_union_of_what_the_resources_need():
    spec = needs_of([Directory("/a"), File("/b", content="x"), Packages(("p", "q")), Packages(("q", "r")),
                     Line("/c", "l"), Custom("x", ProbeSpec(contents=("/d",), redis_ping=True), lambda f: nothing(""))])
    assert spec.paths == ("/a", "/b") and spec.checksums == ("/b",) and spec.packages == ("p", "q", "r")
    assert spec.lines == (("/c", "l"),) and spec.contents == ("/d",) and spec.redis_ping


@dataclass(frozen=True)
class Sysctl:
    """A new kind of thing on a server, as README's "Where a change goes" says to add one: a class
    with its needs and its diff, both ways, and nothing registered anywhere else."""

    key: str
    value: str
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(contents=(f"/proc/sys/{self.key}",))

    def diff(self, facts: Facts) -> Diff:
        now = (facts.contents.get(f"/proc/sys/{self.key}") or "").strip()
        wanted = self.value if self.present else "0"
        if now == wanted:
            return nothing(f"{self.key} = {now}")
        return doing(Action(f"set {self.key} to {wanted}", cmd("sysctl", "-q", f"{self.key}={wanted}")))


def test_a_new_kind_of_resource_is_one_class_that_the_probe_asks_for_and_the_differ_plans():
    kind = Sysctl("vm/overcommit_memory", "1")
    assert "/proc/sys/vm/overcommit_memory" in needs_of([Directory("/a"), kind]).contents
    facts = Facts(paths={"/a": DIR}, contents={"/proc/sys/vm/overcommit_memory": "0\n"})
    plan = plan_resources("system", [Directory("/a"), kind], facts, "")
    assert [a.script for a in plan.actions] == ["sysctl -q vm/overcommit_memory=1"]
    assert not plan_resources("system", [replace(kind, present=False)], facts, "").changed


def test_the_step_plan_keeps_each_no_op_reason_and_stops_at_a_refusal():
    facts = Facts(paths={"/a": DIR})
    plan = plan_resources("system", [Directory("/a"), Custom("c", decide=lambda f: doing(Action("do c")))], facts,
                          "all fine")
    assert [a.summary for a in plan.actions] == ["do c"] and plan.noops == ("/a root:root 755",)
    quiet = plan_resources("system", [Directory("/a")], facts, "all fine")
    assert not quiet.changed and quiet.noop == "all fine"
    refused = plan_resources("system", [Directory("/b"), Directory("/a", present=True, owner="x")],
                             Facts(paths={"/a": LINK}), "")
    assert refused.error.startswith("/a is a symbolic link") and not refused.actions


@pytest.mark.parametrize("parent,makes_dir", [(DIR, True), (USER_DIR, False)])
def test_root_makes_the_virtualenvs_directory_only_where_its_owner_cannot_and_the_owner_fills_it(parent, makes_dir):
    diff = Virtualenv(VENV, "arches", "arches", "/home/arches", record="/r").diff(Facts(paths={"/opt": parent}))
    script = diff.actions[0].script
    assert ("install -d -o arches -g arches -m 0755 /opt/v" in script) == makes_dir
    assert "runuser -u arches -- env HOME=/home/arches python3 -m venv /opt/v" in script
    assert script.endswith("printf '%s\\n' /opt/v > /r")
