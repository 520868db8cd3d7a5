"""Resources of the OS: Debian packages (one apt transaction), system users and groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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


class _Account:
    """A user or a group: `fact` the facts that list them, `what` the word for it."""

    what: ClassVar[str]
    fact: ClassVar[str]
    name: str
    present: bool

    def needs(self) -> ProbeSpec:
        return ProbeSpec(**{self.fact: (self.name,)})

    def diff(self, facts: Facts) -> Diff:
        known = getattr(facts, self.fact)
        if self.present and self.name not in known:
            return doing(Action(f"create {self.what} {self.name}", self.create(), quick=True))
        if not self.present and self.name in known:
            return doing(Action(f"remove {self.what} {self.name}", self.remove(), quick=True))
        return nothing(f"{self.what} {self.name} {'exists' if self.present else 'absent'}")


@dataclass(frozen=True)
class Group(_Account):
    what = "group"
    fact = "groups"
    name: str
    present: bool = True

    def create(self) -> str:
        return cmd("groupadd", "--system", self.name)

    def remove(self) -> str:
        return cmd("groupdel", self.name)


@dataclass(frozen=True)
class User(_Account):
    """A system user without a login shell, with a home of its own."""

    what = "user"
    fact = "users"
    name: str
    group: str
    home: str
    present: bool = True

    def create(self) -> str:
        return cmd("useradd", "--system", "--gid", self.group, "--home-dir", self.home, "--create-home",
                   "--shell", "/usr/sbin/nologin", self.name)

    def remove(self) -> str:
        return cmd("userdel", self.name)
