"""Lines and blocks that fabcelery adds to files it does not own, as resources (tasks/resources.py):
a line of a system's config file with the comment above it (redis.conf's include of the
project's fragment, rabbitmq-env.conf's), and the managed block of the project's
settings_local.py. Taken out, they go with the blank line a deploy wrote before them, and every
other line of the file stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import Action, Upload
from .probe import Facts, ProbeSpec
from .resources import Diff, Refused, doing, nothing, wrong_kind
from .resources_files import File, Installed
from .shell import cmd


@dataclass(frozen=True)
class Line:
    """One exact line in a file of the system's (redis.conf's include of the project's
    fragment), with the comment line fabcelery wrote above it. Present: a blank line, the
    comment and the line appended, after `before` (a check that may refuse, or a record of
    a restart that is owed from then on); `summary` says it in the step's words. Absent:
    both lines taken out, the file keeping its owner and mode; every other line stays as
    it is."""

    path: str
    line: str
    comment: str = ""
    present: bool = True
    summary: str = ""
    before: str = ""

    def needs(self) -> ProbeSpec:
        lines = ((self.path, self.line),) + (((self.path, self.comment),) if self.comment else ())
        return ProbeSpec(lines=lines)

    def diff(self, facts: Facts) -> Diff:
        there = bool(facts.lines.get((self.path, self.line)))
        if self.present:
            if there:
                return nothing(f"{self.path} has {self.line!r}")
            append = append_lines_script(self.path, *filter(None, (self.comment, self.line)))
            return doing(Action(self.summary or f"add {self.line!r} to {self.path}",
                                "\n".join(filter(None, (self.before, append))), quick=True))
        comment_there = bool(self.comment and facts.lines.get((self.path, self.comment)))
        if not there and not comment_there:
            return nothing(f"{self.path} has no {self.line!r}")
        patterns = [self.line] + ([self.comment] if comment_there else [])
        return doing(Action(f"remove {self.line!r} from {self.path}", remove_lines_script(self.path, patterns),
                            quick=True))



def append_lines_script(path: str, *lines: str) -> str:
    """sh: a blank line, then `lines`, at the end of the file."""
    return cmd("printf", "\\n" + "%s\\n" * len(lines), *lines) + " >> " + cmd(path)



# awk, reading the lines to take out from the environment (awk -v would read backslashes as
# escapes): each of them goes, with the blank line right before it that a deploy wrote there
_REMOVE_LINES_AWK = (
    'function ours(l,  i) { for (i = 1; i <= n; i++) if (l == want[i]) return 1; return 0 } '
    'BEGIN { n = split(ENVIRON["FABCELERY_LINES"], want, "\\n") } '
    'ours($0) { held = 0; next } '
    '{ if (held) print ""; held = 0 } '
    '/^$/ { held = 1; next } '
    '{ print } '
    'END { if (held) print "" }'
)



def remove_lines_script(path: str, lines: list[str]) -> str:
    """sh: the file without these exact lines (nor the blank line a deploy put before each);
    every other line as it was, the owner and mode kept, replaced by a rename."""
    directory, _, base = path.rpartition("/")
    new = f"{directory}/.{base}.fabcelery-new"
    return "\n".join([
        "set -e",
        cmd("cp", "-p", path, new),
        "FABCELERY_LINES=" + cmd("\n".join(lines)) + " awk " + cmd(_REMOVE_LINES_AWK) + " " + cmd(path)
        + " > " + cmd(new),
        cmd("mv", "-f", new, path),
    ])



def without_block(text: str, begin: str, end: str) -> str | None:
    """The text with the managed block (and the blank line a deploy put before it) taken
    out; None when there is no block."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return None
    after = text.find("\n", stop)
    after = len(text) if after < 0 else after + 1
    head, tail = text[:start], text[after:]
    if head.endswith("\n\n"):
        head = head[:-1]
    return head + tail



def with_block(existing: str | None, block: str, begin: str, end: str) -> str:
    """The file's text with `block` in place of the one between `begin` and `end` (or appended,
    after a blank line); the rest untouched."""
    text = existing or ""
    start, stop = text.find(begin), text.find(end)
    if start >= 0 and stop > start:
        after = text.find("\n", stop)
        after = len(text) if after < 0 else after + 1
        return text[:start] + block + text[after:]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + block


@dataclass(frozen=True)
class ManagedBlock:
    """fabcelery's block in a file of the project's (settings_local.py, where the project
    user may write). Present: `block` in place of the old one (or appended), every other line
    kept, the file keeping its owner, with `group` and mode 0640 (the block holds the broker's
    URL); installed with the other files of its step (resources_files.Installed). Absent: the
    block goes and every other line stays; a file that held nothing else is removed. Written
    never through a link."""

    path: str
    begin: str
    end: str
    present: bool = False
    block: str = ""               # present: the block, from `begin` to `end`
    group: str = "root"           # present: the file's group

    def needs(self) -> ProbeSpec:
        return ProbeSpec(paths=(self.path,), user_contents=(self.path,))

    def upload(self, facts: Facts) -> Upload | None:
        """Present: the file with the new block, or None when it has it already."""
        state = facts.paths.get(self.path)
        if state is not None and state.kind != "file":
            what = "a symbolic link" if state.kind == "link" else "not a regular file"
            raise Refused(f"{self.path} is {what}: fabcelery writes its block only into a regular file and "
                          "never through a link; put the file itself there")
        old = facts.contents.get(self.path)
        new = with_block(old, self.block, self.begin, self.end)
        if old == new:
            return None
        return Upload(self.path, new, state.owner if state else "root", self.group, "0640", old_content=old,
                      secret=True, nofollow=True)

    def fix(self, facts: Facts) -> tuple[Action, ...]:
        state = facts.paths.get(self.path)
        if state is None:
            return ()
        return File(self.path, state.owner, self.group, "640").diff(facts).actions

    def diff(self, facts: Facts) -> Diff:
        if self.present:
            return Installed((self,)).diff(facts)
        state = facts.paths.get(self.path)
        if state is None:
            return nothing(f"{self.path} absent")
        if state.kind != "file":
            raise wrong_kind(self.path, "file", state.kind)
        text = facts.contents.get(self.path)
        rest = without_block(text or "", self.begin, self.end)
        if rest is None:
            return nothing(f"{self.path} has no fabcelery block")
        if not rest.strip():
            return doing(Action(f"remove {self.path} (it held only fabcelery's block)",
                                cmd("rm", "-f", "--", self.path), quick=True))
        upload = Upload(self.path, rest, state.owner, state.group, "0" + state.mode, old_content=text, secret=True,
                        nofollow=True)
        return doing(Action(f"remove fabcelery's block from {self.path}", uploads=(upload,)))

