"""Resources of the OS: Debian packages (one apt transaction), system users and groups."""

from __future__ import annotations

from dataclasses import dataclass

from .apt import apt_script, install_script
from .plan import Action
from .probe import Facts, ProbeSpec
from .resources import Diff, doing, nothing
from .shell import cmd


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
        return _account("group", self.name, self.present, facts.groups,
                        cmd("groupadd", "--system", self.name), cmd("groupdel", self.name))


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
        return _account("user", self.name, self.present, facts.users,
                        cmd("useradd", "--system", "--gid", self.group, "--home-dir", self.home, "--create-home",
                            "--shell", "/usr/sbin/nologin", self.name),
                        cmd("userdel", self.name))


def _account(what: str, name: str, present: bool, known, create: str, remove: str) -> Diff:
    """A user or group: created (`create`) when wanted and missing, removed when not wanted."""
    if present and name not in known:
        return doing(Action(f"create {what} {name}", create, quick=True))
    if not present and name in known:
        return doing(Action(f"remove {what} {name}", remove, quick=True))
    return nothing(f"{what} {name} {'exists' if present else 'absent'}")
