"""The deploy, per host: connect, probe, decide every step, then run the plans."""

from __future__ import annotations

import difflib
import re

from .broker import broker_unit, broker_url, manages_broker, plan_broker
from .configs import config_files, plan_configs, template_context, unwanted_files
from .inventory import HostSpec, Inventory
from .layout import Layout
from .plan import StepPlan, fail
from .probe import Facts, ProbeSpec, parse_probe, probe_script
from .pyenv import plan_python
from .remote import HostError, Remote, install_script
from .report import HostResult, Reporter, Timer
from .supervisor import plan_supervisord, plan_verify
from .system import managed_paths, plan_system, user_home

PACKAGES = ("python3", "python3-venv", "redis-server", "rabbitmq-server")
URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def probe_spec(inventory: Inventory, host: HostSpec, with_contents: bool = False) -> ProbeSpec:
    layout = Layout(inventory.project)
    project = inventory.project
    targets = [f.target for f in config_files(inventory, host)] + unwanted_files(inventory, host)
    return ProbeSpec(
        paths=tuple([m.path for m in managed_paths(inventory, host)]
                    + [project.virtualenv, f"{project.path}/{project.name}", layout.settings_local]
                    + targets),
        checksums=tuple(targets) + ((layout.requirements,) if layout.requirements else ()),
        contents=(layout.settings_local, layout.python_stamp)
        + ((layout.requirements,) if layout.requirements else ())
        + (tuple(targets) if with_contents else ()),
        packages=PACKAGES,
        services=(broker_unit(inventory), layout.unit_name),
        users=(project.user,),
        groups=(project.group,),
        virtualenv=project.virtualenv,
        supervisorctl=(f"{layout.venv_bin}/supervisorctl", layout.supervisord_conf),
        supervisord_pidfile=layout.supervisord_pid,
        redis_ping=manages_broker(inventory, host) and inventory.broker.kind == "redis",
    )


def preflight(inventory: Inventory, host: HostSpec, facts: Facts) -> StepPlan | None:
    """Problems that must stop the deploy before anything on the host changes."""
    os_ids = {facts.os.get("id", "")} | set(facts.os.get("id_like", "").split())
    if not os_ids & {"debian", "ubuntu"}:
        name = facts.os.get("pretty_name") or facts.os.get("id") or "an unknown system"
        return fail("preflight", f"the host runs {name}; fabcelery deploys to Debian and Ubuntu only")
    package_dir = f"{inventory.project.path}/{inventory.project.name}"
    state = facts.paths.get(package_dir)
    if state is None or state.kind != "directory":
        return fail(
            "preflight",
            f"{package_dir} is not there: put the project's code at project.path "
            f"({inventory.project.path}) first; fabcelery deploys its Celery side, not the code",
        )
    return None


def plan_deploy(inventory: Inventory, host: HostSpec, facts: Facts) -> list[StepPlan]:
    """Every step's decision, from the probe's facts alone."""
    problem = preflight(inventory, host, facts)
    if problem:
        return [problem]
    home = user_home(inventory, facts)
    local_broker = broker_unit(inventory) if manages_broker(inventory, host) else None
    context = template_context(inventory, host, facts, home, broker_url(inventory, host), local_broker)
    system = plan_system(inventory, host, facts)
    broker = plan_broker(inventory, host, facts)
    python = plan_python(inventory, host, facts, home)
    configs = plan_configs(inventory, host, facts, context)
    supervisord = plan_supervisord(inventory, host, facts, configs)
    steps = [system, broker, python, configs, supervisord]
    anything = any(step.changed for step in steps)
    return steps + [plan_verify(inventory, host, facts, home, anything)]


def deploy_host(inventory: Inventory, host: HostSpec, remote: Remote, reporter: Reporter,
                dry_run: bool = False) -> HostResult:
    result = HostResult(host=host.name)

    def say(step: str, text: str) -> None:
        reporter.line(host.name, f"{step:<12} {text}")

    timer = Timer()
    try:
        remote.open()
    except HostError as exc:
        say("connect", f"failed: {exc}")
        result.failed, result.error = 1, str(exc)
        return result
    try:
        result.ok += 1
        try:
            out = remote.run_root(probe_script(probe_spec(inventory, host, with_contents=dry_run)), "probe")
            facts = parse_probe(out.stdout)
        except Exception as exc:  # noqa: BLE001 - reported per host
            say("probe", f"failed: {exc}")
            result.failed, result.error = 1, f"probe: {exc}"
            return result
        result.ok += 1
        say("probe", f"ok ({facts.os.get('pretty_name', '?')}, {'systemd' if facts.systemd else 'no systemd'}, "
                     f"{timer})")
        plans = plan_deploy(inventory, host, facts)
        blocked = next((p for p in plans if p.error), None)
        if blocked:
            # decided before anything ran: the host is untouched
            say(blocked.name, f"failed: {blocked.error} (nothing was changed)")
            result.failed, result.error = 1, f"{blocked.name}: {blocked.error}"
            return result
        for plan in plans:
            if not run_step(plan, remote, inventory, reporter, host, result, dry_run):
                break
        return result
    finally:
        remote.close()


def run_step(plan: StepPlan, remote: Remote, inventory: Inventory, reporter: Reporter, host: HostSpec,
             result: HostResult, dry_run: bool) -> bool:
    def say(text: str) -> None:
        reporter.line(host.name, f"{plan.name:<12} {text}")

    if not plan.changed:
        say(f"ok ({plan.noop})")
        result.ok += 1
        return True
    if dry_run:
        for action in plan.actions:
            say(f"would {action.summary}")
            for upload in action.uploads:
                reporter.plain(file_diff(upload.target, upload.old_content, upload.content, upload.secret))
        result.ok += 1
        result.changed += 1
        return True
    timer = Timer()
    python = f"{Layout(inventory.project).venv_bin}/python"
    for action in plan.actions:
        say(action.summary)
        try:
            if action.uploads:
                tmpdir = remote.upload_private(action.uploads)
                remote.run_root(install_script(tmpdir, action.uploads, python), action.summary)
            if action.script:
                remote.run_root(action.script, action.summary)
        except HostError as exc:
            say(f"failed: {exc}")
            result.failed, result.error = 1, f"{plan.name}: {str(exc).splitlines()[0]}"
            return False
        except Exception as exc:  # noqa: BLE001 - a host's failure is reported, never a traceback
            say(f"failed: {type(exc).__name__}: {exc}")
            result.failed, result.error = 1, f"{plan.name}: {exc}"
            return False
    say(f"changed ({timer})")
    result.ok += 1
    result.changed += 1
    return True


def file_diff(path: str, old: str | None, new: str, secret: bool) -> str:
    """A unified diff for --dry-run; for files that hold secrets, no context and passwords masked."""
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{path} (on the host)" if old is not None else "/dev/null",
        tofile=f"{path} (after deploy)", n=0 if secret else 3,
    )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return URL_PASSWORD.sub(r"\1********@", text).rstrip("\n")
