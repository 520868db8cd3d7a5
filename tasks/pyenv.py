"""The python step: the virtualenv, and supervisor, celery and the broker client in it.

The project's own pins win: a package the virtualenv already has (Arches pins
celery) stays at its version; a deploy never upgrades the application.
"""

from __future__ import annotations

import hashlib
import re

from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import Action, StepPlan, change, fail, ok
from .probe import Facts, ProbeSpec, normalize_dist
from .shell import as_user, cmd

REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(inventory: Inventory, host: HostSpec, facts: Facts) -> list[str]:
    """The pip requirements for this host, pinned; the project's own pins win."""
    layout = Layout(inventory.project)
    project_file = facts.contents.get(layout.requirements) if layout.requirements else None
    project_pins = requirement_names(project_file or "")
    # celery[redis], not celery + redis: kombu's Redis transport also needs `packaging`,
    # which kombu declares only in its redis extra (kombu 5.7).
    extra = "[redis]" if _broker_scheme(inventory).startswith("redis") else ""
    wanted = []
    if layout.requirements:
        wanted += ["-r", layout.requirements]
    for name, pin in (("supervisor", ""), ("celery", extra)):
        if "celery" == name and name in project_pins:
            wanted.append(f"celery{extra}")  # resolved together with the project's own pin
        elif name in project_pins:
            continue
        else:
            version = facts.dists.get(name) or inventory.versions[name]
            wanted.append(f"{name}{pin}=={version}")
    return wanted


def python_stamp(inventory: Inventory, wanted: list[str], facts: Facts) -> str:
    """What was installed, and from which version of the project's file: unchanged means no pip run."""
    layout = Layout(inventory.project)
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


def _broker_scheme(inventory: Inventory) -> str:
    if inventory.broker.url:
        return inventory.broker.url.split(":", 1)[0]
    return inventory.broker.kind


def parent_dir(path: str) -> str:
    return path.rstrip("/").rpartition("/")[0] or "/"


def venv_owner(inventory: Inventory, facts: Facts) -> tuple[str, str]:
    """pip runs as whoever owns the virtualenv, so it never leaves root-owned files there."""
    state = facts.paths.get(inventory.project.virtualenv)
    if state is not None:
        return state.owner, state.group
    return inventory.project.user, inventory.project.group


def plan_python(inventory: Inventory, host: HostSpec, facts: Facts, home: str) -> StepPlan:
    from .system import runs_celery

    if not runs_celery(host):
        return ok("python", "no celery programs on this host")
    layout = Layout(inventory.project)
    venv = inventory.project.virtualenv
    owner, group = venv_owner(inventory, facts)
    owner_home = home if owner == inventory.project.user else facts.users.get(owner, {}).get("home", "/root")
    actions = []
    if not facts.venv_python:
        # root makes the directory only where the project user cannot (a directory of root's);
        # what is already there, or in a directory of the user's, the user makes and fills
        parent = facts.paths.get(parent_dir(venv))
        make_dir = facts.paths.get(venv) is None and not (parent and parent.owner == owner)
        actions.append(Action(
            f"create virtualenv {venv}",
            (cmd("install", "-d", "-o", owner, "-g", group, "-m", "0755", venv) + " &&\n" if make_dir else "")
            + as_user(owner, owner_home, "python3", "-m", "venv", venv) + " &&\n"
            # what `fab undeploy --purge` may remove: a virtualenv that fabcelery created
            + cmd("printf", "%s\\n", venv) + " > " + cmd(layout.created_virtualenv),
        ))
    wanted = requirements(inventory, host, facts)
    stamp = python_stamp(inventory, wanted, facts)
    if layout.requirements and facts.contents.get(layout.requirements) is None:
        state = facts.paths.get(layout.requirements)
        if state is not None and state.kind == "link":
            return fail("python", f"{layout.requirements} (project.requirements) is a symbolic link: fabcelery "
                                  "reads it only as a regular file, never through a link")
        return fail("python", f"{layout.requirements} (project.requirements) is not on the host")
    missing = [name for name in ("supervisor", "celery", "kombu") if name not in facts.dists]
    if not facts.venv_python or missing or facts.contents.get(layout.python_stamp) != stamp:
        actions.append(Action(
            f"pip install {' '.join(wanted)}",
            as_user(owner, owner_home, f"{venv}/bin/pip", "install", "--quiet", "--disable-pip-version-check",
                    *wanted) + " &&\n"   # the record only after pip succeeded
            + cmd("printf", "%s", stamp) + " > " + cmd(layout.python_stamp),
        ))
    if not actions:
        return ok("python", f"virtualenv has {', '.join(wanted)}")
    return change("python", *actions)


def python_needs(inventory: Inventory) -> ProbeSpec:
    """What the python step needs to know of a host: the virtualenv (and where it would go),
    the requirements file (its checksum taken of the content read, without following a
    link) and the stamp of the last install."""
    project, layout = inventory.project, Layout(inventory.project)
    requirements = (layout.requirements,) if layout.requirements else ()
    return ProbeSpec(paths=(project.virtualenv, parent_dir(project.virtualenv)) + requirements,
                     contents=(layout.python_stamp,), user_contents=requirements, virtualenv=project.virtualenv)
