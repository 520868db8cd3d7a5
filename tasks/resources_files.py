"""Resources of the file system: a directory, a file, with owner and mode; never through a link;
a rendered file, and files installed together; and the upload directories that deploys cut
off left behind."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from .checksum import sha256
from .plan import Action, Upload, Validator
from .probe import Facts, ProbeSpec, union_of
from .resources import Diff, doing, nothing, wrong_kind
from .scripts import set_owner_mode
from .shell import cmd


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
            if facts.checksums.get(self.path) != sha256(self.content):
                return doing(Action(f"install {self.path}", uploads=(
                    Upload(self.path, self.content, self.owner, self.group, "0" + self.mode,
                           old_content=facts.contents.get(self.path)),)))
        if state is None:
            return doing(Action(f"create {self.path}",
                                cmd("install", "-D", "-o", self.owner, "-g", self.group, "-m", self.mode,
                                    "/dev/null", self.path),
                                quick=True))
        return _owner_mode(self.path, state, self.owner, self.group, self.mode, "file")


@dataclass(frozen=True)
class Rendered:
    """A file whose whole text fabcelery renders (a template), compared by checksum: when it
    differs, its upload (validated first, as `validate` says), which Installed installs with
    the other files of its step; when not, its owner and mode put right."""

    path: str
    content: str
    owner: str = "root"
    group: str = "root"
    mode: str = "644"
    validate: Validator | None = None
    present: bool = True

    def needs(self) -> ProbeSpec:
        return ProbeSpec(paths=(self.path,), checksums=(self.path,))

    def upload(self, facts: Facts) -> Upload | None:
        if facts.checksums.get(self.path) == sha256(self.content):
            return None
        return Upload(self.path, self.content, self.owner, self.group, "0" + self.mode, self.validate,
                      old_content=facts.contents.get(self.path))

    def fix(self, facts: Facts) -> tuple[Action, ...]:
        if self.path not in facts.paths:
            return ()
        return File(self.path, self.owner, self.group, self.mode).diff(facts).actions

    def diff(self, facts: Facts) -> Diff:
        return Installed((self,)).diff(facts)


class Installable(Protocol):
    """A member of Installed: its upload when its text must change, else its owner/mode fixes."""

    def needs(self) -> ProbeSpec: ...
    def upload(self, facts: Facts) -> Upload | None: ...
    def fix(self, facts: Facts) -> tuple[Action, ...]: ...


@dataclass(frozen=True)
class Installed:
    """The files of one step, installed together: every changed one validated on the host, then
    all renamed into place, in one action (`install NAME, NAME`), so that supervisord never
    reads half a new set; the unchanged ones' owner and mode put right after it."""

    members: tuple[Installable, ...]
    present: bool = True

    def needs(self) -> ProbeSpec:
        return union_of(m.needs() for m in self.members)

    def diff(self, facts: Facts) -> Diff:
        uploads: list[Upload] = []
        fixes: list[Action] = []
        for member in self.members:
            if (upload := member.upload(facts)) is not None:
                uploads.append(upload)
            else:
                fixes += member.fix(facts)
        install = [Action(f"install {', '.join(PurePosixPath(u.target).name for u in uploads)}",
                          uploads=tuple(uploads))] if uploads else []
        if not install and not fixes:
            return nothing(f"{len(self.members)} file{'s' if len(self.members) > 1 else ''} as they should be")
        return doing(*install, *fixes)


def _owner_mode(path: str, state, owner: str, group: str, mode: str, kind: str) -> Diff:
    if (state.owner, state.group, state.mode) == (owner, group, mode):
        return nothing(f"{path} {owner}:{group} {mode}")
    return doing(Action(
        f"fix owner/mode of {path} ({state.owner}:{state.group} {state.mode} -> {owner}:{group} {mode})",
        set_owner_mode(path, owner, group, mode, kind),
        quick=True,
    ))


@dataclass(frozen=True)
class LeftoverUploads:
    """The private upload directories (`prefix` and a random name) of deploys cut off mid-upload,
    older than `minutes` (an upload lives for seconds), which may hold a part of a file with a
    password: always absent. Only names of that exact form are removed, whatever /tmp holds."""

    prefix: str
    minutes: int
    present: bool = False

    def needs(self) -> ProbeSpec:
        return ProbeSpec(stale_tmp=(self.prefix.removeprefix("/tmp/") + "*", self.minutes))

    def diff(self, facts: Facts) -> Diff:
        stale = [path for path in facts.stale_tmp if re.fullmatch(re.escape(self.prefix) + "[A-Za-z0-9]+", path)]
        if not stale:
            return nothing("no upload left by a deploy that was cut off")
        what = "directory" if len(stale) == 1 else "directories"
        return doing(Action(f"remove {len(stale)} upload {what} left by a deploy that was cut off",
                            cmd("rm", "-rf", "--", *stale)))
