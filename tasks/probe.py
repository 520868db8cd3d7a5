"""The state probe: one remote command that returns everything a deploy decides from.

The script is POSIX sh (a bare server may have no Python yet), its command lines made
from the ProbeSpec by the facts of tasks/facts.py, one class each. It prints what it finds
in the protocol of every fabcelery script (tasks/runner.py): one `@@NAME RC BASE64` section
per finding, so free text (os-release, dpkg and supervisorctl output, file contents) cannot
break it; a finding that is only there or not (a flag) is an empty section. parse_probe()
decodes the sections into Facts, and every step decides from Facts alone.

ProbeSpec and Facts are frozen dataclasses whose fields are the facts' own (`asks` and
`gives` in tasks/facts.py, in the order of FACTS): probe_types() makes them.
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


class _Spec:
    """What to look at on a host: each fact's `asks` (tasks/facts.py)."""

    _many: tuple[str, ...] = ()     # the fields that are lists (the union joins them)
    _one: tuple[str, ...] = ()      # those of a single value (or-ed)

    def union(self, other: ProbeSpec) -> ProbeSpec:
        """What both specs ask for: lists joined (each entry once, in order), a single value
        taken from whichever spec has it, flags or-ed."""
        values = {name: tuple(dict.fromkeys(getattr(self, name) + getattr(other, name))) for name in self._many}
        values.update((name, getattr(self, name) or getattr(other, name)) for name in self._one)
        return type(self)(**values)


class _Facts:
    """What the probe found on a host: each fact's `gives` (tasks/facts.py)."""

    def installed(self, package: str) -> bool:
        return self.packages.get(package, False)

    def service_active(self, unit: str) -> bool:
        return self.services.get(unit, {}).get("active") == "active"

    def service_enabled(self, unit: str) -> bool:
        return self.services.get(unit, {}).get("enabled") == "enabled"


def probe_types(facts: tuple[Fact, ...]) -> tuple[type, type]:
    """The ProbeSpec and Facts dataclasses of these facts: their `asks` and `gives`, in order."""
    asks = [(name, ask) for fact in facts for name, ask in fact.asks.items()]
    spec = make_dataclass("ProbeSpec", [(name, ask.type, field(default=ask.default)) for name, ask in asks],
                          bases=(_Spec,), frozen=True,
                          namespace={"_many": tuple(name for name, ask in asks if ask.many),
                                     "_one": tuple(name for name, ask in asks if not ask.many)})
    gives = [(name, give) for fact in facts for name, give in fact.gives.items()]
    found = make_dataclass("Facts", [(name, give.type, field(default_factory=give.default) if callable(give.default)
                                      else field(default=give.default)) for name, give in gives],
                           bases=(_Facts,), frozen=True)
    for made, base in ((spec, _Spec), (found, _Facts)):
        made.__module__, made.__doc__ = __name__, base.__doc__
    return spec, found


ProbeSpec, Facts = probe_types(FACTS)


def union_of(specs) -> ProbeSpec:
    """One spec that asks for what each of these asks for (ProbeSpec.union, in order)."""
    spec = ProbeSpec()
    for part in specs:
        spec = spec.union(part)
    return spec


def probe_script(spec: ProbeSpec, facts: tuple[Fact, ...] = FACTS) -> str:
    """The sh script that prints the host's state as sections (kv: tasks/scripts/sections.sh):
    every fact's lines, in the order of FACTS. Each line stands alone: a failing check must not
    end the probe."""
    lines = [line for fact in facts for line in fact.prelude(spec)]
    lines.append("export LC_ALL=C")
    lines.extend(line for fact in facts for line in fact.script(spec))
    return inline_program("\n".join(lines))


def parse_probe(text: str) -> Facts:
    """The probe's printed output as Facts (ProbeError if it did not run to its end)."""
    try:
        return probe_facts(parse_sections(text))
    except ScriptOutputError as exc:
        raise ProbeError(f"the probe's answer cannot be read: {exc}") from None


def probe_facts(sections: Sections, facts: tuple[Fact, ...] = FACTS, into: type | None = None) -> Facts:
    """Facts from an answer's sections, as these facts read them (every fact's by default;
    fab status reads a few from sections of its own: tasks/status.py); `into`: the Facts type
    of other facts (probe_types)."""
    found = Found(sections)
    values: dict[str, object] = {}
    for fact in facts:
        values.update(fact.read(found))
    return (into or Facts)(**values)
