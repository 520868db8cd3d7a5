"""Resources of the file system: a directory, a file, with owner and mode; never through a link;
and the upload directories that deploys cut off left behind."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .plan import Action, Upload
from .probe import Facts, ProbeSpec
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
