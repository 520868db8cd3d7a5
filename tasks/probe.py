"""The state probe: one remote command that returns everything a deploy decides from.

The script is POSIX sh (a bare server may have no Python yet), its command lines made
from the ProbeSpec by the facts of tasks/facts.py, one class each. It prints what it finds
in the protocol of every fabcelery script (tasks/runner.py): one `@@NAME RC BASE64` section
per finding, so free text (os-release, dpkg and supervisorctl output, file contents) cannot
break it; a finding that is only there or not (a flag) is an empty section. parse_probe()
decodes the sections into Facts, and every step decides from Facts alone.

ProbeSpec and Facts are frozen dataclasses whose fields are the facts' own (`asks` and
`gives` in tasks/facts.py, in the order of FACTS).
"""

from __future__ import annotations

from dataclasses import field, make_dataclass

from .facts import FACTS
from .facts_base import (
    Fact,
    Found,
    PathState,
    RedisSurvey,
    list_dists,
    normalize_dist,
    parse_dists,
    parse_os_release,
)
from .runner import ScriptOutputError, Sections, parse_sections
from .scripts import inline_program

__all__ = ["Facts", "PathState", "ProbeError", "ProbeSpec", "RedisSurvey", "list_dists", "normalize_dist",
           "parse_dists", "parse_os_release", "parse_probe", "probe_facts", "probe_script", "union_of"]


class ProbeError(Exception):
    """The probe's answer could not be read."""


# ProbeSpec's fields that are lists (the union joins them), and those of a single value (or-ed)
_MANY = tuple(name for fact in FACTS for name, ask in fact.asks.items() if ask.many)
_ONE = tuple(name for fact in FACTS for name, ask in fact.asks.items() if not ask.many)


class _Spec:
    """What to look at on a host: each fact's `asks` (tasks/facts.py)."""

    __slots__ = ()

    def union(self, other: ProbeSpec) -> ProbeSpec:
        """What both specs ask for: lists joined (each entry once, in order), a single value
        taken from whichever spec has it, flags or-ed."""
        values = {name: tuple(dict.fromkeys(getattr(self, name) + getattr(other, name))) for name in _MANY}
        values.update((name, getattr(self, name) or getattr(other, name)) for name in _ONE)
        return ProbeSpec(**values)


class _Facts:
    """What the probe found on a host: each fact's `gives` (tasks/facts.py)."""

    __slots__ = ()

    def installed(self, package: str) -> bool:
        return self.packages.get(package, False)

    def service_active(self, unit: str) -> bool:
        return self.services.get(unit, {}).get("active") == "active"

    def service_enabled(self, unit: str) -> bool:
        return self.services.get(unit, {}).get("enabled") == "enabled"


def _dataclass(name: str, base: type, fields: list) -> type:
    made = make_dataclass(name, fields, bases=(base,), frozen=True)
    made.__module__, made.__doc__ = __name__, base.__doc__
    return made


ProbeSpec = _dataclass("ProbeSpec", _Spec, [(name, ask.type, field(default=ask.default))
                                            for fact in FACTS for name, ask in fact.asks.items()])
Facts = _dataclass("Facts", _Facts, [
    (name, give.type, field(default_factory=give.default) if callable(give.default) else field(default=give.default))
    for fact in FACTS for name, give in fact.gives.items()])


def union_of(specs) -> ProbeSpec:
    """One spec that asks for what each of these asks for (ProbeSpec.union, in order)."""
    spec = ProbeSpec()
    for part in specs:
        spec = spec.union(part)
    return spec


def probe_script(spec: ProbeSpec) -> str:
    """The sh script that prints the host's state as sections (kv: tasks/scripts/sections.sh):
    every fact's lines, in the order of FACTS. Each line stands alone: a failing check must not
    end the probe."""
    lines = [line for fact in FACTS for line in fact.prelude(spec)]
    lines.append("export LC_ALL=C")
    lines.extend(line for fact in FACTS for line in fact.script(spec))
    return inline_program("\n".join(lines))


def parse_probe(text: str) -> Facts:
    """The probe's printed output as Facts (ProbeError if it did not run to its end)."""
    try:
        return probe_facts(parse_sections(text))
    except ScriptOutputError as exc:
        raise ProbeError(f"the probe's answer cannot be read: {exc}") from None


def probe_facts(sections: Sections, facts: tuple[Fact, ...] = FACTS) -> Facts:
    """Facts from an answer's sections, as these facts read them (every fact's by default;
    fab status reads a few from sections of its own: tasks/status.py)."""
    found = Found(sections)
    values: dict[str, object] = {}
    for fact in facts:
        values.update(fact.read(found))
    return Facts(**values)
