"""The state probe: one remote command that returns everything a deploy decides from.

The script is POSIX sh (a bare server may have no Python yet), its command lines made
from the ProbeSpec here. It prints what it finds in the protocol of every fabcelery
script (tasks/runner.py): one `@@NAME RC BASE64` section per finding, so free text
(os-release, dpkg and supervisorctl output, file contents) cannot break it; a finding
that is only there or not (a flag) is an empty section. parse_probe() decodes the
sections into Facts, and every step decides from Facts alone.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from dataclasses import fields as spec_fields

from .runner import ScriptOutputError, Sections, parse_sections
from .scripts import SYSTEM_PYTHON, inline_program, text
from .shell import cmd, pid_alive


class ProbeError(Exception):
    """The probe's answer could not be read."""


@dataclass(frozen=True)
class RedisSurvey:
    """Look for signs that a running Redis serves others (tasks/scripts/redis_survey.sh), only
    where `conf` lacks the exact line `unless_line` (no cost where it is there: the probe's
    check of that line decides). `fragments`: a glob of fabcelery's projects' files; `sample`:
    how many keys of each database are read."""

    conf: str
    unless_line: str
    fragments: str
    sample: int


@dataclass(frozen=True)
class ProbeSpec:
    """What to look at on a host."""

    paths: tuple[str, ...] = ()          # stat: type, owner, group, mode
    checksums: tuple[str, ...] = ()      # sha256 of files we manage
    contents: tuple[str, ...] = ()       # small files whose text a step needs
    # the same, where the project user can write (settings_local.py): read without following a link
    user_contents: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()       # Debian packages
    services: tuple[str, ...] = ()       # systemd units
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    virtualenv: str = ""
    # (config file, command): when the config and the system's Python exist, the command
    # prints what `supervisorctl status` prints (tasks.supervisor.status_command)
    supervisor_status: tuple[str, str] | None = None
    supervisord_pidfile: str = ""
    legacy_supervisord_pidfile: str = ""  # a supervisord run as root by an earlier fabcelery
    redis_ping: bool = False
    redis_auth: str = ""                 # sh snippet that exports REDISCLI_AUTH from a file, if needed
    redis_user: str = ""                 # the ACL user redis-cli pings as (--user)
    rabbitmq_ping: bool = False
    redis_survey: RedisSurvey | None = None
    lines: tuple[tuple[str, str], ...] = ()   # (file, exact line): is the line in the file?
    # (name glob, minutes): the login user's entries of /tmp of that name, untouched for so long
    stale_tmp: tuple[str, int] | None = None
    # (directory, name glob): the regular files of that directory whose names match
    listings: tuple[tuple[str, str], ...] = ()
    # a directory whose subdirectories' names are wanted (/var/lib/fabcelery: which projects)
    subdirs: tuple[str, ...] = ()

    def union(self, other: ProbeSpec) -> ProbeSpec:
        """What both specs ask for: lists joined (each entry once, in order), a single value
        taken from whichever spec has it, flags or-ed."""
        values = {}
        for f in spec_fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, tuple) and f.name not in ("supervisor_status", "stale_tmp"):
                values[f.name] = tuple(dict.fromkeys(mine + theirs))
            elif isinstance(mine, bool):
                values[f.name] = mine or theirs
            else:
                values[f.name] = mine or theirs
        return ProbeSpec(**values)


def union_of(specs) -> ProbeSpec:
    """One spec that asks for what each of these asks for (ProbeSpec.union, in order)."""
    spec = ProbeSpec()
    for part in specs:
        spec = spec.union(part)
    return spec


@dataclass(frozen=True)
class PathState:
    kind: str        # "directory", "file", "socket", "link", "other" (as lstat sees it)
    owner: str
    group: str
    mode: str        # octal, like "750"


@dataclass(frozen=True)
class Facts:
    os: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    systemd: bool = False
    packages: dict[str, bool] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)     # installed packages' versions
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    paths: dict[str, PathState | None] = field(default_factory=dict)
    checksums: dict[str, str | None] = field(default_factory=dict)
    contents: dict[str, str | None] = field(default_factory=dict)
    services: dict[str, dict[str, str]] = field(default_factory=dict)
    venv_python: bool = False
    dists: dict[str, str] = field(default_factory=dict)
    supervisord_running: bool = False
    legacy_supervisord: bool = False
    supervisor_status: str | None = None
    redis_ping: str | None = None
    rabbitmq_ping: bool | None = None
    # what redis_survey.sh printed, by section (survey:NAME -> NAME); {} where it did not run
    redis_survey: dict[str, str] = field(default_factory=dict)
    lines: dict[tuple[str, str], bool] = field(default_factory=dict)
    stale_tmp: tuple[str, ...] = ()
    listings: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    subdirs: dict[str, tuple[str, ...]] = field(default_factory=dict)   # directory -> names

    def installed(self, package: str) -> bool:
        return self.packages.get(package, False)

    def service_active(self, unit: str) -> bool:
        return self.services.get(unit, {}).get("active") == "active"

    def service_enabled(self, unit: str) -> bool:
        return self.services.get(unit, {}).get("enabled") == "enabled"


def list_dists(virtualenv: str) -> str:
    """The virtualenv's distributions, a `lib/python3.X/site-packages/NAME-VERSION.dist-info` line
    each: names only, and find -P follows no link the project user may have put there."""
    return (f'find -P {cmd(virtualenv + "/lib")} -mindepth 3 -maxdepth 3 -name "*.dist-info" '
            '-path "*/python3*/site-packages/*" 2>/dev/null | sort')


def probe_script(spec: ProbeSpec) -> str:
    """The sh script that prints the host's state as sections (kv: tasks/scripts/sections.sh)."""
    lines = [
        "export LC_ALL=C",
        'kv os_release "$(b64 < /etc/os-release)"',
        'kv hostname "$(uname -n | b64)"',
        'kv pid1 "$(cat /proc/1/comm 2>/dev/null | b64)"',
    ]
    if spec.packages:
        lines.append(
            "kv dpkg \"$(dpkg-query -W -f='${Package} ${db:Status-Abbrev} ${Version}\\n' "
            + cmd(*spec.packages)
            + ' 2>/dev/null | b64)"'
        )
    for user in spec.users:
        lines.append(f'kv {cmd("user:" + user)} "$(getent passwd {cmd(user)} | b64)"')
    for group in spec.groups:
        lines.append(f'kv {cmd("group:" + group)} "$(getent group {cmd(group)} | b64)"')
    # One stat and one sha256sum for all paths (a process or three per path added up to
    # half the probe); a path that does not exist is missing from their output.
    if spec.paths:
        lines.append(f"kv stats \"$(stat -c '%F|%U|%G|%a|%n' {cmd(*spec.paths)} 2>/dev/null | b64)\"")
    if spec.checksums:
        lines.append(f'kv sha256s "$(sha256sum {cmd(*spec.checksums)} 2>/dev/null | b64)"')
    for path in spec.contents:
        lines.append(f'[ -f {cmd(path)} ] && kv {_key("content", path)} "$(b64 < {cmd(path)})"')
    for path in spec.user_contents:
        lines.append(f'[ -f {cmd(path)} ] && kv {_key("content", path)} '
                     f'"$(dd if={cmd(path)} iflag=nofollow status=none 2>/dev/null | b64)"')
    if spec.services:
        # one systemctl for all units (one each for is-enabled and is-active cost 14 ms apiece):
        # a block of properties per unit, in the order asked
        key = _key("units", "\n".join(spec.services))
        lines.append(
            f'[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && kv {key} '
            f'"$(systemctl show -p UnitFileState -p ActiveState {cmd(*spec.services)} 2>/dev/null | b64)"'
        )
    if spec.virtualenv:
        venv = spec.virtualenv
        lines.append(f'[ -x {cmd(venv + "/bin/python")} ] && kv venv_python ""')
        lines.append(f'kv dists "$({list_dists(venv)} | b64)"')
    if spec.supervisord_pidfile:
        lines.append(f'{pid_alive(spec.supervisord_pidfile)} && kv supervisord ""')
    if spec.legacy_supervisord_pidfile:
        lines.append(f'{pid_alive(spec.legacy_supervisord_pidfile)} && kv legacy_supervisord ""')
    if spec.supervisor_status:
        conf, status = spec.supervisor_status
        lines.append(f'[ -x {SYSTEM_PYTHON} ] && [ -f {cmd(conf)} ] && kv supervisor_status "$({status} 2>&1 | b64)"')
    if spec.redis_ping:
        who = f" --user {cmd(spec.redis_user)}" if spec.redis_user else ""
        lines.append(
            f'command -v redis-cli >/dev/null && kv redis_ping "$({spec.redis_auth}\n'
            f'timeout 3 redis-cli{who} ping 2>&1 | head -n1 | b64)"'
        )
    if spec.rabbitmq_ping:
        lines.append(
            "command -v rabbitmq-diagnostics >/dev/null && "
            '{ timeout 10 rabbitmq-diagnostics -q ping >/dev/null 2>&1; kv rabbitmq_ping "" $?; }'
        )
    survey = spec.redis_survey
    if survey:
        lines.insert(0, text("redis_survey.sh"))
        run_survey = (f"command -v redis-cli >/dev/null && redis_survey {cmd(survey.conf)} {cmd(survey.fragments)} "
                      f"{int(survey.sample)}")
    for path, line in spec.lines:
        key = _key("line", f"{path}\n{line}")
        if survey and (path, line) == (survey.conf, survey.unless_line):
            # the one check decides both: the line is there, or Redis is surveyed
            lines.append(f"if grep -qxF {cmd(line)} {cmd(path)} 2>/dev/null; then kv {key} ''; "
                         f"else {run_survey}; fi")
            survey = None
        else:
            lines.append(f"grep -qxF {cmd(line)} {cmd(path)} 2>/dev/null && kv {key} ''")
    if survey:
        lines.append(f"grep -qxF {cmd(survey.unless_line)} {cmd(survey.conf)} 2>/dev/null || {{ {run_survey}; }}")
    if spec.stale_tmp:
        glob, minutes = spec.stale_tmp
        # SUDO_USER: the login user, when the probe runs through sudo
        lines.append(f'kv stale_tmp "$(find /tmp -maxdepth 1 -name {cmd(glob)} -user "${{SUDO_USER:-root}}" '
                     f'-mmin +{int(minutes)} 2>/dev/null | b64)"')
    for directory, glob in spec.listings:
        key = _key("list", f"{directory}\n{glob}")
        # no find at all where the directory is not (conf.d on a server that never had it)
        lines.append(f'[ -d {cmd(directory)} ] && kv {key} "$(find -P {cmd(directory)} -maxdepth 1 -type f '
                     f'-name {cmd(glob)} 2>/dev/null | b64)"')
    for directory in spec.subdirs:
        lines.append(f'kv {_key("subdirs", directory)} "$(find -P {cmd(directory)} -mindepth 1 -maxdepth 1 -type d '
                     f'2>/dev/null | b64)"')
    # Each probe line stands alone: a failing check must not end the probe.
    return inline_program("\n".join(lines))


def _key(kind: str, name: str) -> str:
    """A section's name for a finding about a path (or several names): base64, no blank in it."""
    return f"{kind}:" + base64.b64encode(name.encode()).decode()


def parse_probe(text: str) -> Facts:
    """The probe's printed output as Facts (ProbeError if it did not run to its end)."""
    try:
        return probe_facts(parse_sections(text))
    except ScriptOutputError as exc:
        raise ProbeError(f"the probe's answer cannot be read: {exc}") from None


def probe_facts(sections: Sections) -> Facts:
    raw = {name: section.text for name, section in sections.items()}
    packages: dict[str, bool] = {}
    versions: dict[str, str] = {}
    for line in raw.get("dpkg", "").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            packages[parts[0]] = parts[1].startswith("ii")
            if len(parts) >= 3 and packages[parts[0]]:
                versions[parts[0]] = parts[2]
    users, groups, contents, services, lines, listings, survey = {}, {}, {}, {}, {}, {}, {}
    subdirs: dict[str, tuple[str, ...]] = {}
    paths: dict[str, PathState | None] = {}
    for line in raw.get("stats", "").splitlines():
        *fields, path = line.split("|", 4)
        paths[path] = _stat(fields)
    checksums = {path: digest for digest, _, path in
                 (line.partition("  ") for line in raw.get("sha256s", "").splitlines())}
    for key, value in raw.items():
        kind, _, name = key.partition(":")
        if kind == "user":
            users[name] = _passwd(value)
        elif kind == "group":
            groups[name] = value.strip()
        elif kind == "content":
            contents[_b64(name)] = value
        elif kind == "line":
            path, _, line = _b64(name).partition("\n")
            lines[(path, line)] = True
        elif kind == "list":
            directory, _, glob = _b64(name).partition("\n")
            listings[(directory, glob)] = tuple(sorted(value.splitlines()))
        elif kind == "subdirs":
            subdirs[_b64(name)] = tuple(sorted(p.rpartition("/")[2] for p in value.splitlines()))
        elif kind == "units":
            services.update(_units(_b64(name).splitlines(), value))
        elif kind == "survey":
            survey[name] = value
    return Facts(
        os=parse_os_release(raw.get("os_release", "")),
        hostname=raw.get("hostname", "").strip(),
        systemd=raw.get("pid1", "").strip() == "systemd",
        packages=packages,
        versions=versions,
        users={k: v for k, v in users.items() if v},
        groups={k: v for k, v in groups.items() if v},
        paths=paths,
        checksums=checksums,
        contents=contents,
        services=services,
        venv_python="venv_python" in raw,
        dists=parse_dists(raw.get("dists", "")),
        supervisord_running="supervisord" in raw,
        legacy_supervisord="legacy_supervisord" in raw,
        supervisor_status=raw.get("supervisor_status"),
        redis_ping=raw["redis_ping"].strip() if "redis_ping" in raw else None,
        rabbitmq_ping=sections["rabbitmq_ping"].ok if "rabbitmq_ping" in sections else None,
        redis_survey=survey,
        lines=lines,
        stale_tmp=tuple(raw.get("stale_tmp", "").splitlines()),
        listings=listings,
        subdirs=subdirs,
    )


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip().lower()] = value.strip().strip("'\"")
    return values


def parse_dists(text: str) -> dict[str, str]:
    """'python3.13/site-packages/celery-5.7.0.dist-info' lines -> {'celery': '5.7.0'}."""
    dists = {}
    for line in text.splitlines():
        stem = line.rsplit("/", 1)[-1].removesuffix(".dist-info")
        name, sep, version = stem.partition("-")
        if sep:
            dists[normalize_dist(name)] = version
    return dists


def normalize_dist(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _units(names: list[str], text: str) -> dict[str, dict[str, str]]:
    """`systemctl show -p UnitFileState -p ActiveState A B`: blank-line separated blocks, in order.
    A unit that does not exist has an empty UnitFileState, as `is-enabled` prints nothing for it."""
    blocks = [dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
              for block in text.strip().split("\n\n")] if text.strip() else []
    if len(blocks) != len(names):
        return {}
    return {name: {"enabled": block.get("UnitFileState", ""), "active": block.get("ActiveState", "")}
            for name, block in zip(names, blocks, strict=True)}


def _stat(parts: list[str]) -> PathState | None:
    """stat -c '%F|%U|%G|%a' fields."""
    if len(parts) != 4:
        return None
    kind = {"directory": "directory", "regular file": "file", "regular empty file": "file", "socket": "socket",
            "symbolic link": "link"}
    return PathState(kind=kind.get(parts[0], "other"), owner=parts[1], group=parts[2], mode=parts[3])


def _passwd(line: str) -> dict[str, str]:
    fields = line.strip().split(":")
    if len(fields) < 7:
        return {}
    return {"name": fields[0], "uid": fields[2], "gid": fields[3], "home": fields[5], "shell": fields[6]}


def _b64(name: str) -> str:
    """The path (or names) in a section's name (_key)."""
    return base64.b64decode(name).decode("utf-8", "replace")
