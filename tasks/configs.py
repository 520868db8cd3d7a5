"""The configs step: Jinja2 templates rendered locally, compared by checksum with
what the host has, and only the changed files uploaded (validated, then renamed
into place). Broker settings go into a managed block of settings_local.py."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .broker import redis_keyprefix, redis_quote
from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import Action, StepPlan, Upload, change, fail, ok
from .probe import Facts
from .shell import cmd, set_owner_mode

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MANAGED = "Managed by fabcelery (fab deploy): local edits are replaced on the next deploy."
BEGIN_MARKER = "# BEGIN fabcelery managed block"
END_MARKER = "# END fabcelery managed block"
NODE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


class TemplateError(Exception):
    """A template could not be rendered; the message names the template and line."""


@dataclass(frozen=True)
class ConfigFile:
    """One row of the table of managed files: where, whose, how checked, what it restarts."""

    target: str
    template: str
    owner: str = "root"
    group: str = "root"
    mode: str = "0644"
    validate: str | None = None
    programs: tuple[str, ...] = ()   # supervisor programs this file defines


def _environment(template_dir: Path | list[Path]) -> jinja2.Environment:
    dirs = template_dir if isinstance(template_dir, list) else [template_dir]
    return _cached_environment(tuple(str(d) for d in dirs))


@functools.lru_cache(maxsize=8)
def _cached_environment(template_dirs: tuple[str, ...]) -> jinja2.Environment:
    """One environment per set of directories, so each template is compiled once per run,
    not once per host and file (Jinja2 keeps the compiled templates in its environment)."""
    env = jinja2.Environment(
        # several directories: the first that has a template wins (FABCELERY_TEMPLATES, then templates/)
        loader=jinja2.FileSystemLoader(list(template_dirs)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = repr
    env.filters["redis_quote"] = redis_quote
    return env


def config_files(inventory: Inventory, host: HostSpec) -> list[ConfigFile]:
    """The supervisor and systemd files this host should have."""
    layout = Layout(inventory.project)
    files = [ConfigFile(layout.supervisord_conf, "supervisord.conf.j2", validate="supervisor")]
    if host.has("worker"):
        files.append(ConfigFile(layout.celeryd_conf, "celeryd.conf.j2", validate="supervisor", programs=("celery",)))
    if host.has("beat"):
        files.append(ConfigFile(layout.celerybeat_conf, "celerybeat.conf.j2", validate="supervisor",
                                programs=("celerybeat",)))
    files.append(ConfigFile(layout.unit_file, "supervisord.service.j2"))
    return files


def unwanted_files(inventory: Inventory, host: HostSpec) -> list[str]:
    """Program files that must not be on this host (e.g. beat moved to another host)."""
    layout = Layout(inventory.project)
    unwanted = []
    if not host.has("worker"):
        unwanted.append(layout.celeryd_conf)
    if not host.has("beat"):
        unwanted.append(layout.celerybeat_conf)
    return unwanted


def template_context(inventory: Inventory, host: HostSpec, facts: Facts, home: str, broker_url: str,
                     local_broker_unit: str | None) -> dict:
    layout = Layout(inventory.project)
    hostname = NODE_NAME_UNSAFE.sub("-", facts.hostname or host.name)
    return {
        "managed": MANAGED,
        "name": inventory.project.name,
        "project": inventory.project,
        "group": inventory.project.group,
        "celery": inventory.celery,
        "layout": layout,
        "venv_bin": layout.venv_bin,
        "home": home,
        "node_name": node_name(facts.hostname or host.name),
        "hostname": hostname,
        "broker_url": broker_url,
        # a Redis that fabcelery manages: every key and channel of the project begins with this
        "redis_keyprefix": redis_keyprefix(inventory)
        if inventory.broker.kind == "redis" and not inventory.broker.url else "",
        "local_broker_unit": local_broker_unit,
        "begin_marker": BEGIN_MARKER,
        "end_marker": END_MARKER,
    }


def node_name(hostname: str) -> str:
    """The worker's node name, set explicitly so `inspect ping -d` can name it."""
    return "celery@" + NODE_NAME_UNSAFE.sub("-", hostname)


def render(template: str, context: dict, template_dir: Path = TEMPLATES) -> str:
    try:
        return _environment(template_dir).get_template(template).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {exc.name or template}, line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template {template}: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template {exc.name} not found in {template_dir}") from None


def merge_managed_block(existing: str | None, block: str) -> str:
    """settings_local.py with our block in place of the old one (or appended); the rest untouched."""
    text = existing or ""
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin >= 0 and end > begin:
        after = text.find("\n", end)
        after = len(text) if after < 0 else after + 1
        return text[:begin] + block + text[after:]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + block


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def plan_configs(inventory: Inventory, host: HostSpec, facts: Facts, context: dict,
                 template_dir: Path = TEMPLATES) -> StepPlan:
    from .system import runs_celery

    if not runs_celery(host):
        return ok("configs", "no celery programs on this host", changed=[], changed_programs=[], removed=[])
    layout = Layout(inventory.project)
    uploads: list[Upload] = []
    actions: list[Action] = []
    changed_programs: set[str] = set()
    changed_targets: list[str] = []
    try:
        rendered = [(f, render(f.template, context, template_dir)) for f in config_files(inventory, host)]
        block = render("settings_local.block.j2", context, template_dir)
    except TemplateError as exc:
        return fail("configs", str(exc))

    for spec, content in rendered:
        if facts.checksums.get(spec.target) != sha256(content):
            uploads.append(Upload(spec.target, content, spec.owner, spec.group, spec.mode, spec.validate,
                                  old_content=facts.contents.get(spec.target)))
            changed_programs.update(spec.programs)
            changed_targets.append(spec.target)
        else:
            actions.extend(_fix_mode(spec.target, facts, spec.owner, spec.group, spec.mode))

    # settings_local.py: only our block changes; the file keeps its owner, gets the
    # project group and loses world access (it holds the broker URL).
    settings = layout.settings_local
    settings_state = facts.paths.get(settings)
    old = facts.contents.get(settings)
    new = merge_managed_block(old, block)
    owner = settings_state.owner if settings_state else "root"
    if old != new:
        uploads.append(Upload(settings, new, owner, inventory.project.group, "0640", old_content=old, secret=True))
        changed_targets.append(settings)
    else:
        actions.extend(_fix_mode(settings, facts, owner, inventory.project.group, "0640"))

    removals = [path for path in unwanted_files(inventory, host) if facts.checksums.get(path)]
    if uploads:
        names = ", ".join(Path(u.target).name for u in uploads)
        actions.insert(0, Action(f"install {names}", uploads=tuple(uploads)))
    for path in removals:
        actions.append(Action(f"remove {path}", cmd("rm", "-f", path), quick=True))
        changed_targets.append(path)
    data = {
        "changed": changed_targets,
        "changed_programs": sorted(changed_programs),
        "removed": removals,
    }
    if not actions:
        return ok("configs", "every config file is up to date", **data)
    return change("configs", *actions, **data)


def _fix_mode(path: str, facts: Facts, owner: str, group: str, mode: str) -> list[Action]:
    state = facts.paths.get(path)
    if state is None or (state.owner, state.group, state.mode) == (owner, group, mode.lstrip("0")):
        return []
    return [Action(
        f"fix owner/mode of {path}",
        set_owner_mode(path, owner, group, mode),
        quick=True,
    )]
