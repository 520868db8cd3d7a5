"""The python step: the virtualenv, and supervisor, celery and the broker client in it.

The project's own pins win: a package the virtualenv already has (Arches pins
celery) stays at its version; a deploy never upgrades the application.
"""

from __future__ import annotations

import hashlib
import re

from .inventory import Inventory
from .plan import StepName, StepPlan, ok
from .probe import Facts, ProbeSpec, normalize_dist
from .resources import needs_of, plan_resources
from .resources_python import UNCHANGED_REQUIREMENTS, PipInstall, Virtualenv
from .target import Target

REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(target: Target, facts: Facts) -> list[str]:
    """The pip requirements for this host, pinned; the project's own pins win."""
    layout = target.layout
    project_file = facts.contents.get(layout.requirements) if layout.requirements else None
    project_pins = requirement_names(project_file or "")
    # celery[redis], not celery + redis: kombu's Redis transport also needs `packaging`,
    # which kombu declares only in its redis extra (kombu 5.7).
    extra = celery_extra(target)
    wanted = []
    if layout.requirements:
        wanted += ["-r", layout.requirements]
    for name, pin in (("supervisor", ""), ("celery", extra)):
        if "celery" == name and name in project_pins:
            wanted.append(f"celery{extra}")  # resolved together with the project's own pin
        elif name in project_pins:
            continue
        else:
            version = facts.dists.get(name) or target.inventory.versions[name]
            wanted.append(f"{name}{pin}=={version}")
    return wanted


def python_stamp(target: Target, wanted: list[str], facts: Facts) -> str:
    """What was installed, and from which version of the project's file: unchanged means no pip run."""
    layout = target.layout
    stamp = "\n".join(wanted) + "\n"
    if layout.requirements:
        content = facts.contents.get(layout.requirements)
        digest = hashlib.sha256(content.encode()).hexdigest() if content is not None else None
        stamp += f"# {layout.requirements} sha256 {digest}\n"
    return stamp


def requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        match = REQUIREMENT_NAME.match(line)
        if match and not line.lstrip().startswith(("#", "-")):
            names.add(normalize_dist(match.group(1)))
    return names


def celery_extra(target: Target) -> str:
    """celery's pip extra for the broker: an external one's by its URL's scheme, else its strategy's."""
    if target.inventory.broker.url:
        return "[redis]" if target.inventory.broker.url.startswith("redis") else ""
    return target.broker.celery_extra


def venv_owner(inventory: Inventory, facts: Facts) -> tuple[str, str]:
    """pip runs as whoever owns the virtualenv, so it never leaves root-owned files there."""
    state = facts.paths.get(inventory.project.virtualenv)
    if state is not None:
        return state.owner, state.group
    return inventory.project.user, inventory.project.group


def plan_python(target: Target, facts: Facts, home: str) -> StepPlan:
    from .system import runs_celery

    if not runs_celery(target.host):
        return ok(StepName.PYTHON, "no celery programs on this host")
    resources = python_resources(target, facts, home)
    return plan_resources(StepName.PYTHON, resources, facts, UNCHANGED_REQUIREMENTS)


def python_resources(target: Target, facts: Facts, home: str) -> list:
    """The virtualenv and what pip installs into it, made and run by the virtualenv's owner."""
    layout = target.layout
    venv = target.inventory.project.virtualenv
    owner, group = venv_owner(target.inventory, facts)
    owner_home = home if owner == target.inventory.project.user else facts.users.get(owner, {}).get("home", "/root")
    wanted = requirements(target, facts)
    return [
        # what `fab undeploy --purge` may remove: a virtualenv that fabcelery created
        Virtualenv(venv, owner, group, owner_home, record=layout.created_virtualenv),
        PipInstall(venv, owner, owner_home, tuple(wanted), python_stamp(target, wanted, facts),
                   layout.python_stamp, requires=("supervisor", "celery", "kombu"),
                   requirements=layout.requirements or "", key="project.requirements",
                   changes_record=layout.pending_apply),
    ]


def python_needs(target: Target) -> ProbeSpec:
    """What the python step needs to know of a host: what its resources need (the virtualenv
    and where it would go, the requirements file read without following a link, the stamp
    of the last install)."""
    return needs_of(python_resources(target, Facts(), home=""))
