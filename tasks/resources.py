"""What fabcelery owns on a host, as typed resources, and the one differ that turns
(resources, facts) into actions.

A resource is one thing on a server (packages, a user, a directory, a file, a line in
a file, the managed block of settings_local.py, a systemd unit, a virtualenv and what pip
installs into it, a broker account), and
it is wanted present or absent. Each kind says which facts it needs (`needs`: a part of
the probe's spec; the probe asks for the union, in one round trip) and what it takes to
get from the facts to the wanted state (`diff`: the actions, or why there is nothing to
do). `plan_resources` runs the differ over a step's resources and makes the step's plan.

The system step declares its packages, user, group, directories and log files as
resources; the python step its virtualenv and pip install; the configs step its files'
owner and mode and the files it removes; the broker step the lines it adds to system
files (a line, and settings_local.py's managed block: tasks/file_edits.py). `fab undeploy`
(tasks/undeploy.py) declares everything a deploy put on a host, absent.
Nothing here touches a host: deciding is pure, and tested as tables
(tests/unit/test_resources.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from .apt import apt_script, install_script
from .plan import Action, Effect, StepName, StepPlan, Upload, change, fail, ok
from .probe import Facts, ProbeSpec, union_of
from .scripts import set_owner_mode
from .shell import as_user, cmd


class Refused(Exception):
    """The host holds something in the way that fabcelery did not make (a link where a
    directory belongs): the step stops before it changes anything, and says what to fix."""


@dataclass(frozen=True)
class Diff:
    actions: tuple[Action, ...] = ()
    noop: str = ""        # why nothing is to be done, when `actions` is empty


class Resource(Protocol):
    present: bool

    def needs(self) -> ProbeSpec: ...

    def diff(self, facts: Facts) -> Diff: ...


def nothing(why: str) -> Diff:
    return Diff(noop=why)


def doing(*actions: Action) -> Diff:
    return Diff(actions=tuple(actions))


# --- packages, users, groups ----------------------------------------------------------------


@dataclass(frozen=True)
class Packages:
    """Debian packages, installed (or purged) in one apt transaction: apt's start-up and
    lists dominate its cost. A purge takes exactly these packages: when apt would remove
    another one with them (one that depends on them), nothing is removed and the step
    says which."""

    names: tuple[str, ...]
    present: bool = True
    apt_lock: int = 120          # seconds to wait for apt's lock (tasks/apt.py)
    # a file that gets the names of the packages installed here (what a purge may take back)
    record: str = ""

    def needs(self) -> ProbeSpec:
        return ProbeSpec(packages=self.names)

    def diff(self, facts: Facts) -> Diff:
        if self.present:
            missing = [name for name in self.names if not facts.installed(name)]
            if not missing:
                return nothing(f"{', '.join(self.names)} installed")
            script = install_script(missing, self.apt_lock)
            if self.record:
                directory = self.record.rpartition("/")[0]
                script += "\n" + "\n".join([
                    cmd("install", "-d", "-m", "0755", directory),
                    cmd("printf", "%s\\n", *missing) + " >> " + cmd(self.record),
                ])
            return doing(Action(f"install {', '.join(missing)}", script))
        installed = [name for name in self.names if facts.installed(name)]
        if not installed:
            return nothing(f"{', '.join(self.names) or 'no package'} not installed")
        return doing(Action(f"purge {', '.join(installed)}", purge_script(installed, self.apt_lock)))


def purge_script(packages: list[str], lock_timeout: int) -> str:
    """apt-get purge of exactly these packages, after apt's simulation showed that it
    would purge nothing else; waiting for apt's lock like every apt-get here."""
    expected = " ".join(sorted(packages))
    check = "\n".join([
        "_would=$(apt-get -s -qq purge " + cmd(*packages)
        + " 2>/dev/null | sed -n 's/^Purg \\([^ ]*\\).*/\\1/p' | sort | tr '\\n' ' ')",
        f'if [ "$_would" != {cmd(expected + " ")} ]; then',
        "  echo \"apt would purge more than fabcelery installed ($_would): nothing was removed; "
        "remove the packages yourself if they should go\" >&2",
        "  exit 1",
        "fi",
    ])
    return check + "\n" + apt_script(("purge", "-y", "-qq", *packages), lock_timeout=lock_timeout)


@dataclass(frozen=True)
class Group:
    name: str
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(groups=(self.name,))

    def diff(self, facts: Facts) -> Diff:
        if self.present and self.name not in facts.groups:
            return doing(Action(f"create group {self.name}", cmd("groupadd", "--system", self.name), quick=True))
        if not self.present and self.name in facts.groups:
            return doing(Action(f"remove group {self.name}", cmd("groupdel", self.name), quick=True))
        return nothing(f"group {self.name} {'exists' if self.present else 'absent'}")


@dataclass(frozen=True)
class User:
    """A system user without a login shell, with a home of its own."""

    name: str
    group: str
    home: str
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(users=(self.name,))

    def diff(self, facts: Facts) -> Diff:
        if self.present and self.name not in facts.users:
            return doing(Action(
                f"create user {self.name}",
                cmd("useradd", "--system", "--gid", self.group, "--home-dir", self.home, "--create-home",
                    "--shell", "/usr/sbin/nologin", self.name),
                quick=True,
            ))
        if not self.present and self.name in facts.users:
            return doing(Action(f"remove user {self.name}", cmd("userdel", self.name), quick=True))
        return nothing(f"user {self.name} {'exists' if self.present else 'absent'}")


# --- directories and files ------------------------------------------------------------------


def wrong_kind(path: str, kind: str, found: str) -> Refused:
    what = "a symbolic link" if found == "link" else f"not a {kind}"
    return Refused(f"{path} is {what}: fabcelery never follows a link or replaces what it did not make; "
                   f"remove it, and the next deploy creates the {kind}")


@dataclass(frozen=True)
class Directory:
    """A directory with its owner, group and mode (octal, as stat prints it: "750").

    Absent: removed with what is in it; a `shared` one (/etc/supervisor, /var/log/celery:
    other projects, or the system's packages, may keep files there) only once it is empty.
    """

    path: str
    owner: str = "root"
    group: str = "root"
    mode: str = "755"
    present: bool = True
    shared: bool = False

    def needs(self) -> ProbeSpec:
        return ProbeSpec(paths=(self.path,))

    def diff(self, facts: Facts) -> Diff:
        state = facts.paths.get(self.path)
        if not self.present:
            if state is None:
                return nothing(f"{self.path} absent")
            if state.kind == "link":      # the link only, never what it points to
                return doing(Action(f"remove the link {self.path}", cmd("rm", "-f", "--", self.path), quick=True))
            if state.kind != "directory":
                raise wrong_kind(self.path, "directory", state.kind)
            if self.shared:
                # (a purged package may have taken it already)
                return doing(Action(f"remove {self.path} if empty",
                                    f"[ ! -d {cmd(self.path)} ] || "
                                    + cmd("rmdir", "--ignore-fail-on-non-empty", "--", self.path), quick=True))
            # rm -r never follows a link inside the tree; --one-file-system stays on this one
            return doing(Action(f"remove {self.path}", cmd("rm", "-rf", "--one-file-system", "--", self.path),
                                quick=True))
        if state is None:
            return doing(Action(f"create {self.path}",
                                cmd("install", "-d", "-o", self.owner, "-g", self.group, "-m", self.mode, self.path),
                                quick=True))
        if state.kind != "directory":
            raise wrong_kind(self.path, "directory", state.kind)
        return _owner_mode(self.path, state, self.owner, self.group, self.mode, "directory")


@dataclass(frozen=True)
class File:
    """A file with its owner, group and mode. With `content` None (a log file) it is created
    empty, and its content is not fabcelery's business; absent: removed."""

    path: str
    owner: str = "root"
    group: str = "root"
    mode: str = "644"
    present: bool = True
    content: str | None = None

    def needs(self) -> ProbeSpec:
        return ProbeSpec(paths=(self.path,), checksums=(self.path,) if self.content is not None else ())

    def diff(self, facts: Facts) -> Diff:
        state = facts.paths.get(self.path)
        if not self.present:
            if state is None:
                return nothing(f"{self.path} absent")
            if state.kind not in ("file", "link", "socket"):
                raise wrong_kind(self.path, "file", state.kind)
            return doing(Action(f"remove {self.path}", cmd("rm", "-f", "--", self.path), quick=True))
        if state is not None and state.kind != "file":
            raise wrong_kind(self.path, "file", state.kind)
        if self.content is not None:
            if facts.checksums.get(self.path) != hashlib.sha256(self.content.encode()).hexdigest():
                return doing(Action(f"install {self.path}", uploads=(
                    Upload(self.path, self.content, self.owner, self.group, "0" + self.mode,
                           old_content=facts.contents.get(self.path)),)))
        if state is None:
            return doing(Action(f"create {self.path}",
                                cmd("install", "-D", "-o", self.owner, "-g", self.group, "-m", self.mode,
                                    "/dev/null", self.path),
                                quick=True))
        return _owner_mode(self.path, state, self.owner, self.group, self.mode, "file")


def _owner_mode(path: str, state, owner: str, group: str, mode: str, kind: str) -> Diff:
    if (state.owner, state.group, state.mode) == (owner, group, mode):
        return nothing(f"{path} {owner}:{group} {mode}")
    return doing(Action(
        f"fix owner/mode of {path} ({state.owner}:{state.group} {state.mode} -> {owner}:{group} {mode})",
        set_owner_mode(path, owner, group, mode, kind),
        quick=True,
    ))


# --- services -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A systemd unit of fabcelery's, with its file. Absent: stopped (its own TimeoutStopSec
    bounds the stop: supervisord's warm shutdown of its programs), disabled, its file
    removed and systemd told. On a host without systemd, `stop` is what stops it."""

    name: str
    path: str
    stop: str = ""                # sh that stops the service when it runs outside systemd
    present: bool = False

    def needs(self) -> ProbeSpec:
        return ProbeSpec(paths=(self.path,), services=(self.name,))

    def diff(self, facts: Facts) -> Diff:
        if self.present:
            raise ValueError("a unit is installed by the configs step; only its absence is planned here")
        known = facts.services.get(self.name, {})
        running = facts.systemd and known.get("active") not in (None, "", "inactive", "failed")
        has_file = facts.paths.get(self.path) is not None
        lines = ["set -e"]
        if self.stop:
            lines.append(self.stop)
        if has_file and facts.systemd:
            lines.append(cmd("systemctl", "disable", "--now", "--quiet", self.name))
        elif running:       # its file already gone (an undeploy cut off): stop what still runs
            lines.append(cmd("systemctl", "stop", self.name))
        if has_file:
            lines.append(cmd("rm", "-f", "--", self.path))
            if facts.systemd:
                lines.append(cmd("systemctl", "daemon-reload"))
        if len(lines) == 1:
            return nothing(f"{self.name} absent")
        return doing(Action(f"stop and remove {self.name}", "\n".join(lines)))


@dataclass(frozen=True)
class Timer:
    """A systemd timer of fabcelery's, enabled and started, with the unit files it runs by
    (File resources with their content, uploaded by their own diff): when one of them changes,
    systemd reloads them and the timer starts anew. Absent: see Unit. `why`: what it is for, in
    the refusal on a host without systemd."""

    name: str
    files: tuple[File, ...] = ()
    why: str = ""
    present: bool = True

    def needs(self) -> ProbeSpec:
        return union_of([ProbeSpec(services=(self.name,)), *(f.needs() for f in self.files)])

    def diff(self, facts: Facts) -> Diff:
        if not self.present:
            raise ValueError("a timer goes as a Unit, absent")
        if not facts.systemd:
            raise Refused(f"{self.why or self.name} runs from a systemd timer ({self.name}), and systemd is not "
                          "PID 1 on this host")
        changed = any(f.diff(facts).actions for f in self.files)
        if changed:
            return doing(Action(f"start {self.name} anew", "\n".join([
                "set -e", cmd("systemctl", "daemon-reload"), cmd("systemctl", "enable", "--quiet", self.name),
                cmd("systemctl", "restart", self.name)]), quick=True))
        if not facts.service_enabled(self.name) or not facts.service_active(self.name):
            return doing(Action(f"enable and start {self.name}",
                                cmd("systemctl", "enable", "--now", "--quiet", self.name), quick=True))
        return nothing(f"{self.name} enabled and active")


# --- a virtualenv and what pip puts into it -------------------------------------------------


@dataclass(frozen=True)
class Virtualenv:
    """A Python virtualenv, made by its owner with the system's python3 -m venv; root makes
    only the directory, and only where the owner could not (a directory of root's). `record`:
    a file that says fabcelery made it. Absent: removed only when that record is there,
    emptied as its owner (root never walks a tree the project user can change)."""

    path: str
    owner: str = ""
    group: str = ""
    home: str = ""          # the owner's, for HOME while it runs
    record: str = ""
    present: bool = True

    def needs(self) -> ProbeSpec:
        if not self.present:
            return ProbeSpec(paths=(self.path,), contents=(self.record,))
        return ProbeSpec(paths=(self.path, parent_of(self.path)), virtualenv=self.path)

    def diff(self, facts: Facts) -> Diff:
        if not self.present:
            return self._removal(facts)
        if facts.venv_python:
            return nothing(f"virtualenv {self.path} there")
        parent = facts.paths.get(parent_of(self.path))
        make_dir = facts.paths.get(self.path) is None and not (parent and parent.owner == self.owner)
        script = ((cmd("install", "-d", "-o", self.owner, "-g", self.group, "-m", "0755", self.path) + " &&\n"
                   if make_dir else "")
                  + as_user(self.owner, self.home, "python3", "-m", "venv", self.path))
        if self.record:
            script += " &&\n" + cmd("printf", "%s\\n", self.path) + " > " + cmd(self.record)
        return doing(Action(f"create virtualenv {self.path}", script))

    def _removal(self, facts: Facts) -> Diff:
        state = facts.paths.get(self.path)
        if facts.contents.get(self.record) is None or state is None:
            return nothing(f"{self.path}: not created by fabcelery, kept")
        if state.kind != "directory":
            return nothing(f"{self.path} is not a directory, kept")
        script = "\n".join([
            "set -e",
            "cd /",      # a directory the owner may read (find goes back to where it started)
            cmd("runuser", "-u", state.owner, "--", "find", self.path, "-mindepth", "1", "-delete"),
            cmd("rmdir", "--", self.path),
        ])
        return doing(Action(f"remove the virtualenv {self.path} (fabcelery created it)", script))


@dataclass(frozen=True)
class PipInstall:
    """What pip installs into a virtualenv (its arguments: pins, `-r FILE`), run as the
    virtualenv's owner; `stamp` (of the arguments and the requirements file's content) is
    kept in `stamp_file` after pip succeeded, and pip runs again only when it differs or a
    distribution in `requires` is missing. `requirements`: a file of the project's that must be
    a regular file on the host (`key`: where the inventory names it)."""

    venv: str
    owner: str
    home: str
    args: tuple[str, ...]
    stamp: str
    stamp_file: str
    requires: tuple[str, ...] = ()
    requirements: str = ""
    key: str = ""
    present: bool = True

    def needs(self) -> ProbeSpec:
        files = (self.requirements,) if self.requirements else ()
        return ProbeSpec(paths=files, contents=(self.stamp_file,), user_contents=files, virtualenv=self.venv)

    def diff(self, facts: Facts) -> Diff:
        if not self.present:
            raise ValueError("what pip installed goes with its virtualenv (Virtualenv, absent)")
        if self.requirements and facts.contents.get(self.requirements) is None:
            state = facts.paths.get(self.requirements)
            if state is not None and state.kind == "link":
                raise Refused(f"{self.requirements} ({self.key}) is a symbolic link: fabcelery reads it only as a "
                              "regular file, never through a link")
            raise Refused(f"{self.requirements} ({self.key}) is not on the host")
        missing = [name for name in self.requires if name not in facts.dists]
        if facts.venv_python and not missing and facts.contents.get(self.stamp_file) == self.stamp:
            return nothing(UNCHANGED_REQUIREMENTS)
        return doing(Action(
            f"pip install {' '.join(self.args)}",
            as_user(self.owner, self.home, f"{self.venv}/bin/pip", "install", "--quiet",
                    "--disable-pip-version-check", *self.args) + " &&\n"   # the record only after pip succeeded
            + cmd("printf", "%s", self.stamp) + " > " + cmd(self.stamp_file),
            effect=Effect.PIP_INSTALL,
        ))


def parent_of(path: str) -> str:
    return path.rstrip("/").rpartition("/")[0] or "/"


@dataclass(frozen=True)
class Custom:
    """A resource whose change is a script decided elsewhere (a broker account: see
    broker.account_resources), so that it takes part in the same differ and probe."""

    what: str
    spec: ProbeSpec = field(default_factory=ProbeSpec)
    decide: object = None         # (facts) -> Diff
    present: bool = True

    def needs(self) -> ProbeSpec:
        return self.spec

    def diff(self, facts: Facts) -> Diff:
        return self.decide(facts)


# --- the differ -------------------------------------------------------------------------------


def needs_of(resources) -> ProbeSpec:
    """The probe's spec for these resources: the union of what each needs."""
    return union_of(resource.needs() for resource in resources)


# what pip was last asked to install (its stamp) is asked again, and every distribution named is there
UNCHANGED_REQUIREMENTS = "requirements unchanged since the last install"


def plan_resources(step: StepName, resources, facts: Facts, noop: str) -> StepPlan:
    """The step's plan: every resource's actions, in order; `noop` when none has any.
    The no-op reason of each resource is kept in the plan (`noops`), as pyinfra keeps why an
    operation did nothing."""
    actions: list[Action] = []
    noops: list[str] = []
    for resource in resources:
        try:
            diff = resource.diff(facts)
        except Refused as exc:
            return fail(step, str(exc))
        actions += diff.actions
        if not diff.actions:
            noops.append(diff.noop)
    if not actions:
        return ok(step, noop, noops=tuple(noops))
    return change(step, *actions, noops=tuple(noops))

