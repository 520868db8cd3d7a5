"""The configs step: Jinja2 templates rendered locally, compared by checksum with
what the host has, and only the changed files uploaded (validated, then renamed
into place). Broker settings go into a managed block of settings_local.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from . import shutdown, timeouts
from .celery_policy import celery_version
from .checksum import sha256
from .file_edits import ManagedBlock, with_block
from .layout import LEGACY_PROGRAMS_DIR
from .plan import Action, ConfigChanges, StepName, StepPlan, Upload, Validator, fail, ok
from .probe import Facts, PathState, ProbeSpec
from .programs import (
    NODE_NAME_UNSAFE,
    Program,
    legacy_program,
    legacy_program_files,
    node_name,
    program_of_config,
    unwanted_programs,
)
from .rendering import TEMPLATES, TemplateError, render
from .resources import Custom, Refused, doing, plan_resources
from .resources_files import File, Installed, Rendered
from .resources_python import PENDING_VENV
from .shell import cmd
from .target import Target

MANAGED = "Managed by fabcelery (fab deploy): local edits are replaced on the next deploy."
BEGIN_MARKER = "# BEGIN fabcelery managed block"
END_MARKER = "# END fabcelery managed block"
__all__ = ["node_name"]   # re-exported: the worker's node name (tasks/programs.py)


@dataclass(frozen=True)
class ConfigFile:
    """One row of the table of managed files: where, how checked, what it restarts. Whose:
    every one is root's, 0644 (the broker's secret files are the broker step's)."""

    owner: ClassVar[str] = "root"
    group: ClassVar[str] = "root"
    mode: ClassVar[str] = "0644"
    target: str
    template: str
    validate: Validator | None = None
    programs: tuple[str, ...] = ()   # supervisor programs this file defines
    program: Program | None = None   # the row of the table of programs it renders


def config_files(target: Target) -> list[ConfigFile]:
    """The supervisor and systemd files this host should have."""
    layout = target.layout
    files = [ConfigFile(layout.supervisord_conf, "supervisord.conf.j2", validate=Validator.SUPERVISORD)]
    files += [ConfigFile(p.config, p.template, validate=Validator.PROGRAMS, programs=(p.name,), program=p)
              for p in target.programs]
    files.append(ConfigFile(layout.unit_file, "supervisord.service.j2"))
    # checked with `logrotate -d` before it is installed (install.logrotate_check)
    files.append(ConfigFile(layout.logrotate_conf, "logrotate.conf.j2", validate=Validator.LOGROTATE))
    return files


def log_files(target: Target) -> list[str]:
    """Every log fabcelery makes on this host: supervisord's and its programs'."""
    return [target.layout.supervisord_log] + [p.log for p in target.programs]


def unwanted_files(target: Target) -> list[str]:
    """Program files of the inventory that must not be on this host (a pool placed elsewhere,
    beat moved to another host). Files of pools the inventory no longer names: stray_files."""
    return [p.config for p in unwanted_programs(target.inventory, target.layout, target.programs)]


LISTED = PathState("file", "root", "root", "644")   # a file known to be there, not stat-ed

def stray_files(target: Target, facts: Facts) -> list[str]:
    """Pool files on the host that the inventory does not name at all (a pool removed or renamed)."""
    layout = target.layout
    known = {f.target for f in config_files(target)} | set(unwanted_files(target))
    return sorted(path for path in facts.listings.get(layout.pool_conf_glob, ()) if path not in known)


def legacy_files(target: Target, facts: Facts) -> dict[str, str]:
    """{file: program} of the program files an earlier fabcelery left in /etc/supervisor/conf.d,
    where Debian's root supervisord loads them too: a deploy moves them out."""
    return legacy_program_files(target.layout, facts.listings.get(target.layout.legacy_programs_glob, ()))


def legacy_changes(target: Target, paths) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the files moved out of conf.d, the programs of them that this host no longer runs:
    removed from its supervisord, not moved). A program that stays has its file in
    layout.programs_dir."""
    wanted = {p.name for p in target.programs}
    programs = {path: legacy_program(target.layout, path) for path in paths}
    moved = tuple(sorted(path for path, program in programs.items() if program))
    return moved, tuple(sorted({p for p in programs.values() if p and p not in wanted}))


def template_context(target: Target, facts: Facts, home: str, broker_url: str,
                     local_broker_unit: str | None) -> dict:
    layout = target.layout
    hostname = NODE_NAME_UNSAFE.sub("-", facts.hostname or target.host.name)
    pools = [p.pool for p in target.workers]
    # a worker hands its running tasks back when its warm shutdown's time is up (tasks/shutdown.py)
    handback = shutdown.handback_seconds(pools, celery_version(target, facts))
    return {
        "managed": MANAGED,
        "name": target.inventory.project.name,
        "project": target.inventory.project,
        "group": target.inventory.project.group,
        "celery": target.inventory.celery,
        "layout": layout,
        "venv_bin": layout.venv_bin,
        "home": home,
        "node_name": node_name(facts.hostname or target.host.name),
        "hostname": hostname,
        # supervisord stops its programs one after another, each up to its stopwaitsecs
        "stop_timeout": max(target.inventory.celery.stopwaitsecs,
                            sum(shutdown.supervisor_stopwaitsecs(p, handback) for p in pools)) + 60,
        "handback": handback,
        "handback_env": shutdown.HANDBACK_ENV,
        "handback_grace": shutdown.GRACE,
        "handback_begin": shutdown.HANDBACK_BEGIN,
        "handback_end": shutdown.HANDBACK_END,
        "broker_url": broker_url,
        # a Redis that fabcelery manages: every key and channel of the project begins with this
        "redis_keyprefix": target.broker.key_prefix(),
        "local_broker_unit": local_broker_unit,
        "logs": target.inventory.logs,
        "log_files": log_files(target),
        "begin_marker": BEGIN_MARKER,
        "end_marker": END_MARKER,
        # the broker's timeouts, above every pool's longest task (tasks/timeouts.py)
        **timeouts.context(target.inventory),
    }


def file_context(spec: ConfigFile, context: dict) -> dict:
    """The context of one file: a program's file gets its row of the table of programs."""
    if spec.program is None:
        return context
    return {**context, "program": spec.program, "pool": spec.program.pool,
            "node_name": spec.program.node(context["hostname"])}


def main_needs_restart(old: str | None, new: str) -> bool:
    """Whether a changed supervisord.conf needs supervisord restarted: not when only comments
    or its [include] changed (the programs moved out of conf.d): `reread` reads the whole
    config again, includes and all, and `update` then restarts only the programs whose own
    section changed (none, when the same program moved to another file)."""
    if old is None:
        return True
    return _settings(old) != _settings(new)


def _settings(text: str) -> list[str]:
    """A supervisor config's lines that supervisord reads at its start only: no comments, no [include]."""
    lines, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            section = line
        if section != "[include]":
            lines.append(line)
    return lines


def unit_needs_restart(old: str | None, new: str) -> bool:
    """Whether a changed unit needs supervisord restarted: not when only TimeoutStopSec changed
    (a pool added with a longer stopwaitsecs), which `daemon-reload` alone applies."""
    if old is None:
        return True
    keep = lambda text: [line for line in text.splitlines() if not line.startswith("TimeoutStopSec=")]  # noqa: E731
    return keep(old) != keep(new)


def merge_managed_block(existing: str | None, block: str) -> str:
    """settings_local.py with our block in place of the old one (or appended); the rest untouched."""
    return with_block(existing, block, BEGIN_MARKER, END_MARKER)


def plan_configs(target: Target, facts: Facts, context: dict,
                 template_dir: Path = TEMPLATES) -> StepPlan:
    from .system import runs_celery

    if not runs_celery(target.host):
        return ok(StepName.CONFIGS, "no celery programs on this host")
    try:
        rendered = [(f, render(f.template, file_context(f, context), template_dir))
                    for f in config_files(target)]
        block = render("settings_local.block.j2", context, template_dir)
    except TemplateError as exc:
        return fail(StepName.CONFIGS, str(exc))

    try:
        plan = _plan_configs(target, facts, context, rendered, block)
    except Refused as exc:
        return fail(StepName.CONFIGS, str(exc))
    return with_pending(target, plan, pending_targets(target, facts))


def _plan_configs(target: Target, facts: Facts, context: dict,
                  rendered: list[tuple[ConfigFile, str]], block: str) -> StepPlan:
    layout = target.layout
    # settings_local.py: only our block changes; the file keeps its owner, gets the project
    # group and loses world access (it holds the broker URL)
    settings = ManagedBlock(layout.settings_local, BEGIN_MARKER, END_MARKER, present=True, block=block,
                            group=target.inventory.project.group)
    installed = Installed((*(Rendered(spec.target, content, spec.owner, spec.group, spec.mode.lstrip("0"),
                                      spec.validate) for spec, content in rendered), settings))
    removals = [path for path in unwanted_files(target) if facts.checksums.get(path)]
    removals += stray_files(target, facts)
    moved_out, legacy_removed = legacy_changes(target, legacy_files(target, facts))
    resources: list = [installed, *(File(path, present=False) for path in removals)]
    if moved_out:
        # out of the directory Debian's supervisord includes: after the new files are in place
        moved = Action(f"remove {', '.join(Path(p).name for p in moved_out)} from {LEGACY_PROGRAMS_DIR} "
                       "(program files moved out of it)", cmd("rm", "-f", "--", *moved_out), quick=True)
        resources.append(Custom(f"program files in {LEGACY_PROGRAMS_DIR}", decide=lambda facts: doing(moved)))
    # known to be there from its checksum or its directory's listing (regular files only)
    seen = replace(facts, paths={**dict.fromkeys(removals, LISTED), **facts.paths}) if removals else facts
    plan = plan_resources(StepName.CONFIGS, resources, seen, "every config file is up to date")
    if plan.error:
        return plan
    # what was installed: the uploads of the step's one install action (Installed)
    uploads = [u for action in plan.actions for u in action.uploads]
    return replace(plan, configs=config_changes(target, facts, rendered, uploads, removals, moved_out,
                                                legacy_removed))


def config_changes(target: Target, facts: Facts, rendered: list[tuple[ConfigFile, str]], uploads: list[Upload],
                   removals: list[str], moved_out: tuple[str, ...], legacy_removed: tuple[str, ...]) -> ConfigChanges:
    """What the configs step changes, for the supervisord step: the files installed (`uploads`)
    and removed, and of them the programs'."""
    layout = target.layout
    installed = {u.target: u for u in uploads}
    changed_programs: set[str] = set()
    added_programs: set[str] = set()
    unit_restart = main_restart = False
    for spec, content in rendered:
        if spec.target not in installed:
            continue
        before = facts.checksums.get(spec.target)
        if before is None and spec.programs:
            # a program file an earlier fabcelery kept in conf.d: moved, and if its text is
            # the same, supervisord sees the same program (nothing restarts)
            before = facts.checksums.get(layout.legacy_conf(spec.target))
        if before != sha256(content):
            changed_programs.update(spec.programs)
        if before is None:
            added_programs.update(spec.programs)
        if spec.target == layout.unit_file:
            unit_restart = unit_needs_restart(facts.contents.get(spec.target), content)
        if spec.target == layout.supervisord_conf:
            main_restart = main_needs_restart(facts.contents.get(spec.target), content)
    old = facts.contents.get(layout.settings_local)
    new = installed[layout.settings_local].content if layout.settings_local in installed else old
    return ConfigChanges(
        changed=tuple([*installed, *removals, *moved_out]),
        changed_programs=tuple(sorted(changed_programs)),
        added_programs=tuple(sorted(added_programs)),
        removed=tuple(removals),
        removed_programs=tuple(sorted({name for path in removals if (name := program_of_config(layout, path))}
                                      | set(legacy_removed))),
        unit_restart=unit_restart,
        main_restart=main_restart,
        moved_out=moved_out,
        settings_workers_only=old != new and shutdown.without_handback(old) == shutdown.without_handback(new),
    )


def program_files_absent(target: Target, facts: Facts) -> list[File]:
    """Every supervisor, program and logrotate file of the project's on this host, absent (the
    unit's own file goes with its Unit)."""
    layout = target.layout
    files = [f.target for f in config_files(target) if f.target != layout.unit_file]
    files += unwanted_files(target) + stray_files(target, facts)
    return [File(path, present=False) for path in files]


def pending_targets(target: Target, facts: Facts) -> list[str]:
    text = facts.contents.get(target.layout.pending_apply) or ""
    return [line for line in text.splitlines() if line.startswith("/")]


def with_pending(target: Target, configs: StepPlan, pending: list[str]) -> StepPlan:
    """The configs step, told what an earlier deploy installed and did not get to apply.

    The files a deploy changes are recorded on the host after they pass validation and
    before they are renamed into place, and the record is removed once every action of
    the supervisord step has succeeded (tasks/follow_ups.py: clear_pending). A deploy cut off in between leaves
    the record, and the next deploy applies those files as if it had changed them: the
    files on disk are right then, but the running programs are not.
    """
    changes = configs.configs
    changed = list(dict.fromkeys([*changes.changed, *pending]))
    if not changed:
        return configs
    programs = {f.target: f.programs for f in config_files(target)}
    # a recorded program file that this host should not have (any more): a removal to apply
    removed = [t for t in pending if t not in programs and program_of_config(target.layout, t)]
    # a file moved out of conf.d: Debian's supervisord may still have to drop it (supervisord step)
    moved_out, legacy_removed = legacy_changes(target, pending)
    layout = target.layout
    record = "\n".join([
        # the virtualenv's line (follow_ups.venv_restart) stays: it is applied by the same step
        "{ " + cmd("grep", "-sx", PENDING_VENV, target.layout.pending_apply) + " || :; "
        + cmd("printf", "%s\\n", *changed) + "; } > " + cmd(target.layout.pending_apply + ".new"),
        cmd("mv", "-f", target.layout.pending_apply + ".new", target.layout.pending_apply),
    ])
    changes = replace(
        changes,
        changed=tuple(changed),
        changed_programs=tuple(sorted({*changes.changed_programs,
                                       *(p for path in pending for p in programs.get(path, ()))})),
        removed=tuple(sorted({*changes.removed, *removed})),
        removed_programs=tuple(sorted({*changes.removed_programs,
                                       *(program_of_config(target.layout, t) for t in removed), *legacy_removed})),
        # the unit was installed, supervisord maybe not restarted: restart it (what changed is not known)
        unit_restart=(changes.unit_restart and layout.unit_file in changes.changed) or layout.unit_file in pending,
        main_restart=((changes.main_restart and layout.supervisord_conf in changes.changed)
                      or layout.supervisord_conf in pending),
        moved_out=tuple(sorted({*changes.moved_out, *moved_out})),
    )
    # every other change of the step (a removal) records it before it runs
    actions = tuple(replace(a, script=record + "\n" + a.script) if a.script and not a.uploads else a
                    for a in configs.actions)
    # record: run by the install script between validation and renames
    return replace(configs, actions=actions, configs=changes, record_pending=record)


def configs_needs(target: Target, with_contents: bool = False) -> ProbeSpec:
    """What the configs step needs to know of a host: its files (and the ones it removes),
    settings_local.py read without following a link, and the pool files there are. With
    contents (--dry-run): the files' text, for the diffs shown."""
    from .system import runs_celery

    layout = target.layout
    files = config_files(target)
    targets = tuple(f.target for f in files) + tuple(unwanted_files(target))
    celery = runs_celery(target.host)
    # where an earlier fabcelery kept this host's program files: same text, nothing restarts
    legacy = tuple(layout.legacy_conf(f.target) for f in files if f.programs)
    return ProbeSpec(
        paths=(layout.settings_local,) + targets, checksums=targets + legacy,
        # the unit: a change of TimeoutStopSec alone needs no restart (unit_needs_restart);
        # supervisord.conf: a change of its [include] alone neither (main_needs_restart)
        contents=targets if with_contents else ((layout.unit_file, layout.supervisord_conf) if celery else ()),
        user_contents=(layout.settings_local,),
        listings=(layout.pool_conf_glob, layout.legacy_programs_glob) if celery else (),
    )
