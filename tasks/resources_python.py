"""Resources of Python: a virtualenv made by its owner, and what pip installs into it."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import EVENT, Action, Event
from .probe import Facts, ProbeSpec, list_dists
from .resources import Diff, Refused, doing, nothing
from .shell import as_user, cmd

# what pip was last asked to install (its stamp) is asked again, and every distribution named is there
UNCHANGED_REQUIREMENTS = "requirements unchanged since the last install"
# the line of PipInstall's `changes_record` when pip changed the virtualenv: the programs still run the old one
PENDING_VENV = "virtualenv"


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
    a regular file on the host (`key`: where the inventory names it).

    `changes_record`: pip's action tells whether it installed, upgraded or removed anything,
    from the virtualenv's distributions (name and version) before and after; when it did, the
    action adds PENDING_VENV to that file and reports Event.VENV_CHANGED (for the restart of the
    programs that run from the virtualenv: tasks/deploy.py)."""

    venv: str
    owner: str
    home: str
    args: tuple[str, ...]
    stamp: str
    stamp_file: str
    requires: tuple[str, ...] = ()
    requirements: str = ""
    key: str = ""
    changes_record: str = ""
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
        script = (as_user(self.owner, self.home, f"{self.venv}/bin/pip", "install", "--quiet",
                          "--disable-pip-version-check", *self.args) + " &&\n"   # the record only after pip succeeded
                  + cmd("printf", "%s", self.stamp) + " > " + cmd(self.stamp_file))
        if self.changes_record:
            script = "\n".join([
                f"_before={_dist_listing(self.venv)}",
                "(\n" + script + "\n) || exit $?",
                f'if [ "$_before" != "{_dist_listing(self.venv)}" ]; then',
                f"  echo {cmd(PENDING_VENV)} >> {cmd(self.changes_record)}",
                f"  echo {cmd(EVENT + Event.VENV_CHANGED)}",
                "fi",
            ])
        return doing(Action(f"pip install {' '.join(self.args)}", script))


def _dist_listing(virtualenv: str) -> str:
    return f"$({list_dists(virtualenv)} | cksum)"


def parent_of(path: str) -> str:
    return path.rstrip("/").rpartition("/")[0] or "/"
