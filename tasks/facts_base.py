"""What a fact of the deploy's probe is (tasks/facts.py holds the facts themselves, one class each).

A fact says what a step may ask for (its ProbeSpec fields, `asks`), the sh lines that find it
(`script`, every value quoted through tasks.shell), how its sections are read (`read`), and
what the steps see (its Facts fields, `gives`). A section is `@@NAME RC BASE64`
(tasks/runner.py); a finding about a path (or about several names) is named KIND:BASE64
(key()), so that any path fits in a section's name. Here too: the values facts hold
(PathState, RedisSurvey, QueueSurvey, RabbitQueue) and the parsers of the commands' outputs.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from .runner import Section, Sections
from .shell import cmd


@dataclass(frozen=True)
class Ask:
    """A ProbeSpec field: a list (`many`: the union of two specs joins them, each entry once, in
    order) or a single value (the union takes whichever spec has it; flags are or-ed)."""

    type: str
    default: object = ()
    many: bool = False


def many(type_: str = "tuple[str, ...]") -> Ask:
    return Ask(type_, (), many=True)


@dataclass(frozen=True)
class Give:
    """A Facts field: its type and its value where the probe did not find it (a callable: made
    afresh for each Facts, as a dict must be)."""

    type: str
    default: object


class Found:
    """An answer's sections, and those named KIND:NAME grouped by kind (read once for all facts)."""

    def __init__(self, sections: Sections):
        self.sections = sections
        self.kinds: dict[str, dict[str, Section]] = {}
        for name, section in sections.items():
            kind, sep, rest = name.partition(":")
            if sep:
                self.kinds.setdefault(kind, {})[rest] = section

    def text(self, name: str) -> str:
        section = self.sections.get(name)
        return section.text if section else ""

    def of_kind(self, kind: str) -> dict[str, str]:
        """{NAME: text} of the sections KIND:NAME, in the order printed."""
        return {name: section.text for name, section in self.kinds.get(kind, {}).items()}


class Fact:
    """One thing the probe finds. `asks`: its ProbeSpec fields; `gives`: its Facts fields."""

    asks: dict[str, Ask] = {}
    gives: dict[str, Give] = {}

    def prelude(self, spec) -> list[str]:
        """sh definitions the probe must hold before its first line (a function)."""
        return []

    def script(self, spec) -> list[str]:
        """The probe's lines for this fact, from the spec (none where it asks nothing of it)."""
        raise NotImplementedError

    def read(self, found: Found) -> dict[str, object]:
        """This fact's Facts fields, from the answer's sections."""
        raise NotImplementedError


class SectionFact(Fact):
    """A fact of one section and one Facts field. fab status reads the same fact from a
    section of its own scripts (tasks/status.py): `section` names it."""

    section = ""

    def __init__(self, section: str = ""):
        self.section = section or self.section
        (self.field,) = self.gives

    def read(self, found: Found) -> dict[str, object]:
        return {self.field: self.value(found.sections.get(self.section))}

    def value(self, section: Section | None) -> object:
        raise NotImplementedError


def key(kind: str, name: str) -> str:
    """A section's name for a finding about a path (or several names): base64, no blank in it."""
    return f"{kind}:" + base64.b64encode(name.encode()).decode()


def unkey(name: str) -> str:
    """The path (or names) in a section's name (key())."""
    return base64.b64decode(name).decode("utf-8", "replace")


@dataclass(frozen=True)
class PathState:
    kind: str        # "directory", "file", "socket", "link", "other" (as lstat sees it)
    owner: str
    group: str
    mode: str        # octal, like "750"


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
class QueueSurvey:
    """List the queues of a RabbitMQ vhost, only where the node's membership file (`members_file`)
    does not name every one of `members`: a node not yet in its whole cluster (no cost once it is)."""

    vhost: str
    members_file: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class RabbitQueue:
    """A queue as `rabbitmqctl list_queues` shows it; `transient`: auto-delete or exclusive (Celery's
    pidbox and event queues), gone with their consumer."""

    name: str
    type: str        # "classic", "quorum", "stream"
    durable: bool
    transient: bool
    messages: int


QUEUE_ITEMS = ("name", "type", "durable", "auto_delete", "exclusive", "messages")


def parse_queue_list(text: str) -> tuple[RabbitQueue, ...] | None:
    """`rabbitmqctl list_queues QUEUE_ITEMS --formatter json`; None where it cannot be read."""
    try:
        rows = json.loads(text) if text.strip() else []
        return tuple(RabbitQueue(name=str(r["name"]), type=str(r.get("type") or "classic"), durable=bool(r["durable"]),
                                 transient=bool(r["auto_delete"]) or bool(r["exclusive"]),
                                 messages=int(r.get("messages") or 0)) for r in rows)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def list_dists(virtualenv: str) -> str:
    """The virtualenv's distributions, a `lib/python3.X/site-packages/NAME-VERSION.dist-info` line
    each: names only, and find -P follows no link the project user may have put there."""
    return (f'find -P {cmd(virtualenv + "/lib")} -mindepth 3 -maxdepth 3 -name "*.dist-info" '
            '-path "*/python3*/site-packages/*" 2>/dev/null | sort')


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


def unit_blocks(names: list[str], text: str) -> dict[str, dict[str, str]]:
    """`systemctl show -p UnitFileState -p ActiveState A B`: blank-line separated blocks, in order.
    A unit that does not exist has an empty UnitFileState, as `is-enabled` prints nothing for it."""
    blocks = [dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
              for block in text.strip().split("\n\n")] if text.strip() else []
    if len(blocks) != len(names):
        return {}
    return {name: {"enabled": block.get("UnitFileState", ""), "active": block.get("ActiveState", "")}
            for name, block in zip(names, blocks, strict=True)}


def stat_fields(parts: list[str]) -> PathState | None:
    """stat -c '%F|%U|%G|%a' fields."""
    if len(parts) != 4:
        return None
    kind = {"directory": "directory", "regular file": "file", "regular empty file": "file", "socket": "socket",
            "symbolic link": "link"}
    return PathState(kind=kind.get(parts[0], "other"), owner=parts[1], group=parts[2], mode=parts[3])


def passwd_entry(line: str) -> dict[str, str]:
    fields = line.strip().split(":")
    if len(fields) < 7:
        return {}
    return {"name": fields[0], "uid": fields[2], "gid": fields[3], "home": fields[5], "shell": fields[6]}
