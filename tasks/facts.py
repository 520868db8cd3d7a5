"""What the deploy's probe finds, one class per fact (what a fact is: tasks/facts_base.py).

A fact is written once, here: what a step asks for (its ProbeSpec fields, `asks`), the sh lines
that find it (`script`, every value quoted through tasks.shell), how its sections are read
(`read`), and what the steps see (its Facts fields, `gives`). FACTS, at the end, lists them in
the order the probe runs them; tasks/probe.py builds ProbeSpec, Facts, the one probe script and
its parser from that list. Adding a fact is a class here and its place in FACTS.
"""

from __future__ import annotations

from .facts_base import (
    QUEUE_ITEMS,
    Ask,
    Fact,
    Found,
    Give,
    PathState,
    RabbitQueue,
    SectionFact,
    key,
    list_dists,
    many,
    parse_dists,
    parse_os_release,
    parse_queue_list,
    passwd_entry,
    stat_fields,
    unit_blocks,
    unkey,
)
from .runner import Section
from .scripts import SYSTEM_PYTHON, pid_alive, text
from .shell import cmd


class OsRelease(SectionFact):
    gives = {"os": Give("dict[str, str]", dict)}
    section = "os_release"

    def script(self, spec) -> list[str]:
        return ['kv os_release "$(b64 < /etc/os-release)"']

    def value(self, section: Section | None) -> dict[str, str]:
        return parse_os_release(section.text if section else "")


class Hostname(SectionFact):
    gives = {"hostname": Give("str", "")}
    section = "hostname"

    def script(self, spec) -> list[str]:
        return ['kv hostname "$(uname -n | b64)"']

    def value(self, section: Section | None) -> str:
        return section.text.strip() if section else ""


class Systemd(SectionFact):
    """PID 1 is systemd."""

    gives = {"systemd": Give("bool", False)}
    section = "pid1"

    def script(self, spec) -> list[str]:
        return ['kv pid1 "$(cat /proc/1/comm 2>/dev/null | b64)"']

    def value(self, section: Section | None) -> bool:
        return section is not None and section.text.strip() == "systemd"


class Packages(Fact):
    """Debian packages: installed or not, and the installed ones' versions."""

    asks = {"packages": many()}
    gives = {"packages": Give("dict[str, bool]", dict), "versions": Give("dict[str, str]", dict)}

    def script(self, spec) -> list[str]:
        if not spec.packages:
            return []
        return ["kv dpkg \"$(dpkg-query -W -f='${Package} ${db:Status-Abbrev} ${Version}\\n' "
                + cmd(*spec.packages) + ' 2>/dev/null | b64)"']

    def read(self, found: Found) -> dict[str, object]:
        packages: dict[str, bool] = {}
        versions: dict[str, str] = {}
        for line in found.text("dpkg").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                packages[parts[0]] = parts[1].startswith("ii")
                if len(parts) >= 3 and packages[parts[0]]:
                    versions[parts[0]] = parts[2]
        return {"packages": packages, "versions": versions}


class Users(Fact):
    """passwd entries: name, uid, gid, home, shell (users that do not exist are left out)."""

    asks = {"users": many()}
    gives = {"users": Give("dict[str, dict[str, str]]", dict)}

    def script(self, spec) -> list[str]:
        return [f'kv {cmd("user:" + user)} "$(getent passwd {cmd(user)} | b64)"' for user in spec.users]

    def read(self, found: Found) -> dict[str, object]:
        users = {name: passwd_entry(value) for name, value in found.of_kind("user").items()}
        return {"users": {k: v for k, v in users.items() if v}}


class Groups(Fact):
    asks = {"groups": many()}
    gives = {"groups": Give("dict[str, str]", dict)}

    def script(self, spec) -> list[str]:
        return [f'kv {cmd("group:" + group)} "$(getent group {cmd(group)} | b64)"' for group in spec.groups]

    def read(self, found: Found) -> dict[str, object]:
        groups = {name: value.strip() for name, value in found.of_kind("group").items()}
        return {"groups": {k: v for k, v in groups.items() if v}}


# One stat and one sha256sum for all paths (a process or three per path added up to half the
# probe); a path that does not exist is missing from their output.
class Paths(SectionFact):
    """stat: type, owner, group, mode."""

    asks = {"paths": many()}
    gives = {"paths": Give("dict[str, PathState | None]", dict)}
    section = "stats"

    def script(self, spec) -> list[str]:
        return [f"kv stats \"$(stat -c '%F|%U|%G|%a|%n' {cmd(*spec.paths)} 2>/dev/null | b64)\""] if spec.paths else []

    def value(self, section: Section | None) -> dict[str, PathState | None]:
        paths = {}
        for line in (section.text if section else "").splitlines():
            *fields, path = line.split("|", 4)
            paths[path] = stat_fields(fields)
        return paths


class Checksums(SectionFact):
    """sha256 of files we manage."""

    asks = {"checksums": many()}
    gives = {"checksums": Give("dict[str, str | None]", dict)}
    section = "sha256s"

    def script(self, spec) -> list[str]:
        return [f'kv sha256s "$(sha256sum {cmd(*spec.checksums)} 2>/dev/null | b64)"'] if spec.checksums else []

    def value(self, section: Section | None) -> dict[str, str | None]:
        return {path: digest for digest, _, path in
                (line.partition("  ") for line in (section.text if section else "").splitlines())}


class Contents(Fact):
    """Small files whose text a step needs; `user_contents` the same, where the project user can
    write (settings_local.py): read without following a link."""

    asks = {"contents": many(), "user_contents": many()}
    gives = {"contents": Give("dict[str, str | None]", dict)}

    def script(self, spec) -> list[str]:
        return ([f'[ -f {cmd(path)} ] && kv {key("content", path)} "$(b64 < {cmd(path)})"' for path in spec.contents]
                + [f'[ -f {cmd(path)} ] && kv {key("content", path)} '
                   f'"$(dd if={cmd(path)} iflag=nofollow status=none 2>/dev/null | b64)"'
                   for path in spec.user_contents])

    def read(self, found: Found) -> dict[str, object]:
        return {"contents": {unkey(name): value for name, value in found.of_kind("content").items()}}


class Services(Fact):
    """systemd units: {"enabled": UnitFileState, "active": ActiveState} each."""

    asks = {"services": many()}
    gives = {"services": Give("dict[str, dict[str, str]]", dict)}

    def script(self, spec) -> list[str]:
        if not spec.services:
            return []
        # one systemctl for all units (one each for is-enabled and is-active cost 14 ms apiece):
        # a block of properties per unit, in the order asked
        return [f'[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && kv {key("units", chr(10).join(spec.services))} '
                f'"$(systemctl show -p UnitFileState -p ActiveState {cmd(*spec.services)} 2>/dev/null | b64)"']

    def read(self, found: Found) -> dict[str, object]:
        services: dict[str, dict[str, str]] = {}
        for name, value in found.of_kind("units").items():
            services.update(unit_blocks(unkey(name).splitlines(), value))
        return {"services": services}


class Virtualenv(Fact):
    """The virtualenv: its python is there, and its distributions' versions."""

    asks = {"virtualenv": Ask("str", "")}
    gives = {"venv_python": Give("bool", False), "dists": Give("dict[str, str]", dict)}

    def script(self, spec) -> list[str]:
        if not spec.virtualenv:
            return []
        return [f'[ -x {cmd(spec.virtualenv + "/bin/python")} ] && kv venv_python ""',
                f'kv dists "$({list_dists(spec.virtualenv)} | b64)"']

    def read(self, found: Found) -> dict[str, object]:
        return {"venv_python": "venv_python" in found.sections, "dists": parse_dists(found.text("dists"))}


class PidAlive(SectionFact):
    """The process of a pid file runs (supervisord's)."""

    asks = {"supervisord_pidfile": Ask("str", "")}
    gives = {"supervisord_running": Give("bool", False)}
    section = "supervisord"

    def script(self, spec) -> list[str]:
        pidfile = getattr(spec, next(iter(self.asks)))
        return [f'{pid_alive(pidfile)} && kv {self.section} ""'] if pidfile else []

    def value(self, section: Section | None) -> bool:
        return section is not None


class LegacySupervisord(PidAlive):
    """A supervisord run as root by an earlier fabcelery runs."""

    asks = {"legacy_supervisord_pidfile": Ask("str", "")}
    gives = {"legacy_supervisord": Give("bool", False)}
    section = "legacy_supervisord"


class SupervisorStatus(SectionFact):
    """What `supervisorctl status` prints; asked as (config file, command): when the config and the
    system's Python exist, the command prints it (tasks.supervisor.status_command)."""

    asks = {"supervisor_status": Ask("tuple[str, str] | None", None)}
    gives = {"supervisor_status": Give("str | None", None)}
    section = "supervisor_status"

    def script(self, spec) -> list[str]:
        if not spec.supervisor_status:
            return []
        conf, status = spec.supervisor_status
        return [f'[ -x {SYSTEM_PYTHON} ] && [ -f {cmd(conf)} ] && kv supervisor_status "$({status} 2>&1 | b64)"']

    def value(self, section: Section | None) -> str | None:
        return section.text if section else None


class RedisPing(SectionFact):
    """redis-cli's answer to PING (its first line), None where redis-cli is not installed.
    `redis_auth`: sh that exports REDISCLI_AUTH from a file, if needed; `redis_user`: the ACL
    user redis-cli pings as (--user)."""

    asks = {"redis_ping": Ask("bool", False), "redis_auth": Ask("str", ""), "redis_user": Ask("str", "")}
    gives = {"redis_ping": Give("str | None", None)}
    section = "redis_ping"

    def script(self, spec) -> list[str]:
        if not spec.redis_ping:
            return []
        who = f" --user {cmd(spec.redis_user)}" if spec.redis_user else ""
        return [f'command -v redis-cli >/dev/null && kv redis_ping "$({spec.redis_auth}\n'
                f'timeout 3 redis-cli{who} ping 2>&1 | head -n1 | b64)"']

    def value(self, section: Section | None) -> str | None:
        if section is None:
            return None
        lines = section.text.strip().splitlines()
        return lines[0] if lines else ""


class RabbitmqPing(SectionFact):
    """rabbitmq-diagnostics ping succeeds; None where it is not installed."""

    asks = {"rabbitmq_ping": Ask("bool", False)}
    gives = {"rabbitmq_ping": Give("bool | None", None)}
    section = "rabbitmq_ping"

    def script(self, spec) -> list[str]:
        if not spec.rabbitmq_ping:
            return []
        return ["command -v rabbitmq-diagnostics >/dev/null && "
                '{ timeout 10 rabbitmq-diagnostics -q ping >/dev/null 2>&1; kv rabbitmq_ping "" $?; }']

    def value(self, section: Section | None) -> bool | None:
        return section.ok if section is not None else None


class RabbitmqQueues(SectionFact):
    """The queues of a cluster node's vhost, listed only while the node is not yet a member of
    its whole cluster (QueueSurvey): what forming or joining the cluster would meet there.
    None where they were not listed (RabbitMQ not running, the node already formed, or an
    answer that cannot be read)."""

    asks = {"rabbitmq_queues": Ask("QueueSurvey | None", None)}
    gives = {"rabbitmq_queues": Give("tuple[RabbitQueue, ...] | None", None)}
    section = "rabbitmq_queues"

    def script(self, spec) -> list[str]:
        survey = spec.rabbitmq_queues
        if not survey:
            return []
        # an Erlang atom in the file: 'rabbit@a-b' quoted, rabbit@ab bare; then , or ] or '
        names = [cmd(m.replace(".", "[.]") + "([],']|$)") for m in survey.members]
        formed = " && ".join(f"grep -qE {name} {cmd(survey.members_file)}" for name in names) or "false"
        listing = cmd("timeout", "30", "rabbitmqctl", "-q", "list_queues", "-p", survey.vhost, *QUEUE_ITEMS,
                      "--formatter", "json")
        # the greps first: on a formed cluster they are all this costs
        return [f"! {{ {formed}; }} 2>/dev/null && systemctl is-active -q rabbitmq-server 2>/dev/null && "
                f"section rabbitmq_queues {listing}"]

    def value(self, section: Section | None) -> tuple[RabbitQueue, ...] | None:
        return parse_queue_list(section.text) if section is not None and section.ok else None


class Lines(Fact):
    """(file, exact line): is the line in the file? And the Redis survey (redis_survey.sh, whose
    sections survey:NAME are given as NAME; {} where it did not run), which the check of one of
    these lines decides: it runs only where that line is not there."""

    asks = {"lines": many("tuple[tuple[str, str], ...]"), "redis_survey": Ask("RedisSurvey | None", None)}
    gives = {"redis_survey": Give("dict[str, str]", dict), "lines": Give("dict[tuple[str, str], bool]", dict)}

    def prelude(self, spec) -> list[str]:
        return [text("redis_survey.sh")] if spec.redis_survey else []

    def script(self, spec) -> list[str]:
        lines = []
        survey = spec.redis_survey
        if survey:
            run_survey = (f"command -v redis-cli >/dev/null && redis_survey {cmd(survey.conf)} "
                          f"{cmd(survey.fragments)} {int(survey.sample)}")
        for path, line in spec.lines:
            name = key("line", f"{path}\n{line}")
            if survey and (path, line) == (survey.conf, survey.unless_line):
                # the one check decides both: the line is there, or Redis is surveyed
                lines.append(f"if grep -qxF {cmd(line)} {cmd(path)} 2>/dev/null; then kv {name} ''; "
                             f"else {run_survey}; fi")
                survey = None
            else:
                lines.append(f"grep -qxF {cmd(line)} {cmd(path)} 2>/dev/null && kv {name} ''")
        if survey:
            lines.append(f"grep -qxF {cmd(survey.unless_line)} {cmd(survey.conf)} 2>/dev/null || {{ {run_survey}; }}")
        return lines

    def read(self, found: Found) -> dict[str, object]:
        lines = {}
        for name in found.kinds.get("line", {}):
            path, _, line = unkey(name).partition("\n")
            lines[(path, line)] = True
        return {"redis_survey": found.of_kind("survey"), "lines": lines}


class StaleTmp(SectionFact):
    """(name glob, minutes): the login user's entries of /tmp of that name, untouched for so long."""

    asks = {"stale_tmp": Ask("tuple[str, int] | None", None)}
    gives = {"stale_tmp": Give("tuple[str, ...]", ())}
    section = "stale_tmp"

    def script(self, spec) -> list[str]:
        if not spec.stale_tmp:
            return []
        glob, minutes = spec.stale_tmp
        # SUDO_USER: the login user, when the probe runs through sudo
        return [f'kv stale_tmp "$(find /tmp -maxdepth 1 -name {cmd(glob)} -user "${{SUDO_USER:-root}}" '
                f'-mmin +{int(minutes)} 2>/dev/null | b64)"']

    def value(self, section: Section | None) -> tuple[str, ...]:
        return tuple((section.text if section else "").splitlines())


class Listings(Fact):
    """(directory, name glob): the regular files of that directory whose names match."""

    asks = {"listings": many("tuple[tuple[str, str], ...]")}
    gives = {"listings": Give("dict[tuple[str, str], tuple[str, ...]]", dict)}

    def script(self, spec) -> list[str]:
        # no find at all where the directory is not (conf.d on a server that never had it)
        return [f'[ -d {cmd(directory)} ] && kv {key("list", f"{directory}{chr(10)}{glob}")} '
                f'"$(find -P {cmd(directory)} -maxdepth 1 -type f -name {cmd(glob)} 2>/dev/null | b64)"'
                for directory, glob in spec.listings]

    def read(self, found: Found) -> dict[str, object]:
        listings = {}
        for name, value in found.of_kind("list").items():
            directory, _, glob = unkey(name).partition("\n")
            listings[(directory, glob)] = tuple(sorted(value.splitlines()))
        return {"listings": listings}


class Subdirs(Fact):
    """A directory's subdirectories' names (/var/lib/fabcelery: which projects)."""

    asks = {"subdirs": many()}
    gives = {"subdirs": Give("dict[str, tuple[str, ...]]", dict)}

    def script(self, spec) -> list[str]:
        return [f'kv {key("subdirs", directory)} "$(find -P {cmd(directory)} -mindepth 1 -maxdepth 1 -type d '
                f'2>/dev/null | b64)"' for directory in spec.subdirs]

    def read(self, found: Found) -> dict[str, object]:
        return {"subdirs": {unkey(name): tuple(sorted(p.rpartition("/")[2] for p in value.splitlines()))
                            for name, value in found.of_kind("subdirs").items()}}


# Every fact, in the order the probe script runs them (and ProbeSpec's and Facts' fields come).
FACTS: tuple[Fact, ...] = (
    OsRelease(), Hostname(), Systemd(), Packages(), Users(), Groups(), Paths(), Checksums(), Contents(),
    Services(), Virtualenv(), PidAlive(), LegacySupervisord(), SupervisorStatus(), RedisPing(), RabbitmqPing(),
    RabbitmqQueues(), Lines(), StaleTmp(), Listings(), Subdirs(),
)
