"""The no-op `fab deploy` beside the same deploy written for Ansible and for pyinfra (issue #6).

bench/compare/ansible/ (a playbook) and bench/compare/pyinfra/ (a deploy file) do what
`fab deploy` does to a host: the OS packages, the project user and group, directories
and log files, Redis with fabcelery's fragment and the include line, the virtualenv with
supervisor and celery, the supervisor and systemd files, the managed block of
settings_local.py, supervisord enabled and running, and, after a change, waiting until
the programs run and the worker answers ping. Both render the repository's own
templates/ from the context that fabcelery itself computes (tasks.configs.template_context),
so the files they write are byte for byte the ones fab writes; bench/compare/README.md says
where the two tools still differ from fab.

The tools are installed from PyPI into their own virtualenv, bench/.venv-compare (pinned in
bench/compare/requirements.txt). bench/bench.py (which puts the repository root on sys.path)
uses this module as:

    import compare                       # or: from bench import compare
    versions = compare.ensure_tools()    # {"ansible-core": "2.19.14", "pyinfra": "3.10.0"}
    compare.prepare(workdir, inventory_path, fleet.state_dir, hosts, password)
    argv, env = compare.ansible_run(workdir, hosts)      # or compare.pyinfra_run(workdir, hosts)
    done = subprocess.run(argv, env=env, capture_output=True, text=True)   # time this
    compare.changes("ansible", done.stdout)              # 0: the run changed nothing

- ensure_tools() -> {tool: version}: creates bench/.venv-compare (`python -m venv`) if
  missing and pip-installs the requirements quietly; skipped when the stamp file in the
  virtualenv holds the requirements' hash.
- prepare(workdir, inventory_path, ssh_dir, hosts, password): reads each host's state with
  fabcelery's own probe (one `ssh -F ssh_dir/ssh_config HOST sudo -n sh`), computes its
  template context and deploy data with fabcelery's code, and writes into workdir:
  ansible/inventory.yml + ansible/host_vars/HOST.json, pyinfra/inventory.py +
  pyinfra/hosts.json. Both tools connect with ssh_dir's ssh_config (its key, known_hosts and
  StrictHostKeyChecking yes). `password` is the fleet's broker password (what fab takes
  from FABCELERY_BROKER_PASSWORD): it is written only into those 0600 files (the broker URL
  of settings_local.py, Redis' requirepass, fabcelery's password file), never printed.
  Call it again after the inventory or the hosts change; the tools check everything else
  (files, packages, services) on the hosts each run, as fab does.
- ansible_run(workdir, hosts) / pyinfra_run(workdir, hosts) -> (argv, env): one deploy of
  those hosts (a subset of the prepared ones, as `fab -H`). pyinfra's argv runs it under
  `sh -c 'exec ... 2>&1'`: pyinfra logs everything, its results table too, to stderr.
- changes(tool, output) -> int: the changes a run reported in its output (stdout; stdout +
  stderr does too). Ansible: the sum of the recap's changed=; pyinfra: the Grand total of
  the "Success" column of its results table, which counts the operations that changed
  something on a host. Raises ValueError when the output has no such summary (a failed or
  cut-off run).
- close_connections(workdir): ends the SSH control masters Ansible keeps for 60 s
  (ControlPersist), so that the next Ansible run starts cold, as fab and pyinfra always do.

By hand (FABCELERY_BROKER_PASSWORD in the environment):

    .venv/bin/python bench/compare.py prepare WORKDIR INVENTORY SSH_DIR HOST...
    .venv/bin/python bench/compare.py run ansible|pyinfra WORKDIR HOST...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasks.api import (  # noqa: E402  (fabcelery's public interface: tasks/api.py)
    REDIS_CONF,
    TEMPLATES,
    Facts,
    HostSpec,
    Inventory,
    Layout,
    Target,
    broker_for,
    broker_url,
    config_files,
    fragment_context,
    load_inventory,
    managed_paths,
    manages_broker,
    needs_password,
    parse_probe,
    password_file,
    plan_python,
    probe_script,
    probe_spec,
    redis_include,
    redis_include_comment,
    required_packages,
    requirements,
    runs_celery,
    supervisorctl,
    template_context,
    unwanted_files,
    user_home,
    verify_script,
)

COMPARE = ROOT / "bench" / "compare"
VENV = ROOT / "bench" / ".venv-compare"
REQUIREMENTS = COMPARE / "requirements.txt"
STAMP = VENV / ".requirements-sha256"
PLAYBOOK = COMPARE / "ansible" / "deploy.yml"
ANSIBLE_CFG = COMPARE / "ansible" / "ansible.cfg"
PYINFRA_DEPLOY = COMPARE / "pyinfra" / "deploy.py"
TOOLS = ("ansible-core", "pyinfra")
VERIFY_TIMEOUT = 120   # seconds, as fab's verify step


# --- the tools ---------------------------------------------------------------------------


def ensure_tools() -> dict[str, str]:
    """bench/.venv-compare with the pinned tools; their versions."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    python = VENV / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(VENV)], "create bench/.venv-compare")
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "-r", str(REQUIREMENTS)], f"pip install -r {REQUIREMENTS}")
        STAMP.write_text(wanted + "\n")
    script = ("import json, importlib.metadata as m; "
              f"print(json.dumps({{n: m.version(n) for n in {list(TOOLS)!r}}}))")
    return json.loads(_run([str(python), "-c", script], "read the tools' versions").stdout)


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done


# --- what each host gets: fabcelery's own context -------------------------------------------


def probe(ssh_config: Path, inventory: Inventory, host: HostSpec) -> Facts:
    """fabcelery's probe of the host, over OpenSSH with the fleet's ssh_config, as root."""
    argv = ["ssh", "-F", str(ssh_config), "--", host.destination, "sudo -n sh -s"]
    script = probe_script(probe_spec(Target.of(inventory, host)))
    done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"probe of {host.name} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return parse_probe(done.stdout)


def _plain(value):
    """Dataclasses (Project, CelerySettings) as dicts, for JSON."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def layout_dict(layout: Layout) -> dict[str, str | None]:
    names = [n for n, v in vars(Layout).items() if isinstance(v, property)]
    return {name: getattr(layout, name) for name in names}


def host_vars(inventory: Inventory, host: HostSpec, facts: Facts, password: str | None) -> dict:
    """Everything the playbook and the deploy file need for one host, from fabcelery's code.

    The keys of tasks.configs.template_context (what the templates use) at the top level;
    the deploy's own data under `fab_*` keys.
    """
    target = Target.of(inventory, host)
    layout = target.layout
    home = user_home(inventory, facts)
    broker = broker_for(inventory, host)
    # As deploy_fleet: the fleet's password only where the broker needs one.
    password = password if broker is not None and needs_password(inventory, broker) else None
    if broker is not None and needs_password(inventory, broker) and not password:
        raise ValueError(f"{host.name}: the broker needs a password (workers on other hosts use it)")
    local_broker = target.broker.unit if manages_broker(inventory, host) else None
    context = template_context(target, facts, home, broker_url(target, password), local_broker)
    context["layout"] = layout_dict(context["layout"])
    # the worker's own file is rendered with its row of the table of programs (tasks.configs.file_context):
    # here, one pool per host, given to every template
    if len(inventory.celery.pools) > 1:
        raise ValueError("bench/compare deploys one worker pool (no celery.pools beyond the default)")
    workers = [p for p in target.programs if p.is_worker]
    if workers:
        context.update(program={**dataclasses.asdict(workers[0]), "worker_options": list(workers[0].worker_options)},
                       pool=dataclasses.asdict(workers[0].pool), node_name=workers[0].node(context["hostname"]))
    context = {key: _plain(value) for key, value in context.items()}
    if manages_broker(inventory, host):
        context.update(fragment_context(target, broker, password))
    data: dict = {
        "fab_templates": str(TEMPLATES),
        "fab_runs_celery": runs_celery(host),
        "fab_worker": host.has("worker"),
        "fab_packages": required_packages(target, Facts()),   # what a fresh host needs
        "fab_dirs": [_mode(m) for m in managed_paths(target) if m.kind == "directory"],
        "fab_files": [_mode(m) for m in managed_paths(target) if m.kind == "file"],
        "fab_parents": parents(managed_paths(target)),
        # as fab's useradd: --system, home /home/USER created, no login shell
        "fab_user": {"name": inventory.project.user, "group": inventory.project.group,
                     "home": f"/home/{inventory.project.user}", "shell": "/usr/sbin/nologin"},
        "fab_programs": [p.name for p in target.programs],
        "fab_broker": None,
        "fab_settings_local": layout.settings_local,
        # the fleet's broker password, for fab's password file and the Redis ping (the templates
        # get only what tasks.broker.fragment_context gives them: the account's hash)
        "password": password,
    }
    if manages_broker(inventory, host):
        if inventory.broker.kind != "redis":
            raise ValueError("bench/compare deploys Redis only (broker.kind: redis)")
        path, template, group, mode = target.broker.fragment()
        data["fab_broker"] = {
            "unit": target.broker.unit, "fragment": path, "template": template, "group": group,
            "mode": mode, "conf": REDIS_CONF, "include": redis_include(inventory),
            # what fab's broker step appends to redis.conf when the include line is missing
            # (tasks/broker.py redis_conf_actions): a blank line, a comment, the line. (Not yet here:
            # its `user default off` line, the removal of the old shared fragment, the pending restart.)
            "include_text": f"\n{redis_include_comment(inventory)}\n{redis_include(inventory)}\n",
            "password_file": password_file(inventory),
            "wait_script": target.broker.wait_script(),   # until redis-cli ping answers (bounded), as fab
        }
    if runs_celery(host):
        wanted = requirements(target, facts)
        flags = pip_flags(inventory, host, facts, home, wanted)
        data["fab_pip"] = {
            "virtualenv": inventory.project.virtualenv,
            "requirements": layout.requirements,
            # `pip install` arguments, as fab: its options, -r FILE, then the supervisor and celery pins
            "args": [*flags, *wanted],
            # fab's record of what pip installed (tasks.pyenv.python_stamp): this, then a line with the
            # requirements file's sha256 from the host; pip runs when the virtualenv is new or it changes
            "stamp": layout.python_stamp,
            "stamp_head": "\n".join(wanted) + "\n",
            "stamp_requirements": f"# {layout.requirements} sha256 %s\n" if layout.requirements else None,
        }
        data["fab_configs"] = [{"target": f.target, "template": f.template, "owner": f.owner, "group": f.group,
                                "mode": f.mode, "programs": list(f.programs)} for f in config_files(target)]
        data["fab_unwanted"] = unwanted_files(target)
        # every file any host may have, in one order, each present or not here (the pyinfra deploy's
        # operations then line up across hosts, whatever their roles)
        wanted_targets = {f.target for f in config_files(target)}
        every = config_files(Target.of(inventory, dataclasses.replace(host, roles=("broker", "worker", "beat"))))
        data["fab_config_slots"] = [{"target": f.target, "template": f.template, "owner": f.owner,
                                     "group": f.group, "mode": f.mode, "programs": list(f.programs),
                                     "present": f.target in wanted_targets} for f in every]
        data["fab_supervisorctl"] = supervisorctl(layout)
        data["fab_unit"] = layout.unit_name
        data["fab_verify_script"] = verify_script(target, home, context["hostname"],
                                                  timeout=VERIFY_TIMEOUT)
    return {**context, **data}


# Directories a fresh Debian has: the managed paths' parents below them are created by `install -d`
BASE_DIRS = {"/", "/etc", "/run", "/var", "/var/log", "/var/lib", "/opt", "/home", "/srv", "/usr", "/usr/local"}


def parents(managed: list) -> list[str]:
    """Parent directories of the managed paths that fab creates implicitly (install -d: root, 0755)."""
    paths = {m.path for m in managed}
    found = set()
    for path in paths:
        parent = path.rsplit("/", 1)[0] or "/"
        while parent not in BASE_DIRS and parent not in paths:
            found.add(parent)
            parent = parent.rsplit("/", 1)[0] or "/"
    return sorted(found)


def pip_flags(inventory: Inventory, host: HostSpec, facts: Facts, home: str, wanted: list[str]) -> list[str]:
    """The options of fab's `pip install` (--quiet, --no-compile, ...), read from the command its python
    step would run on this host with a new virtualenv."""
    plan = plan_python(Target.of(inventory, host), dataclasses.replace(facts, venv_python=False), home)
    for action in plan.actions:
        for line in (action.script or "").splitlines():
            if f"{inventory.project.virtualenv}/bin/pip install" not in line:
                continue
            words = shlex.split(line)
            if words[-1] in ("&&", ";"):       # what fab runs after pip, on the next line
                words = words[:-1]
            if "install" in words:
                options = words[words.index("install") + 1:]
                if options[len(options) - len(wanted):] == wanted:
                    return options[:len(options) - len(wanted)]
    raise RuntimeError(f"cannot find fab's pip install command for {host.name} ({plan.error or plan.noop})")


def _mode(managed) -> dict:
    return {"path": managed.path, "owner": managed.owner, "group": managed.group, "mode": "0" + managed.mode}


def prepare(workdir: Path, inventory_path: Path, ssh_dir: Path, hosts: list[str], password: str) -> None:
    """Write the inventories and per-host data of both tools for `hosts` into workdir."""
    workdir = Path(workdir).resolve()
    ssh_config = Path(ssh_dir).resolve() / "ssh_config"
    inventory = load_inventory(Path(inventory_path))
    specs = [inventory.hosts.get(name) or HostSpec(name=name) for name in hosts]
    with ThreadPoolExecutor(max(1, min(8, len(specs)))) as pool:
        facts = list(pool.map(lambda spec: probe(ssh_config, inventory, spec), specs))
    per_host = {spec.name: host_vars(inventory, spec, f, password) for spec, f in zip(specs, facts, strict=True)}

    ansible = workdir / "ansible"
    (ansible / "host_vars").mkdir(parents=True, exist_ok=True)
    (ansible / "cp").mkdir(mode=0o700, exist_ok=True)
    _write(ansible / "inventory.yml", json.dumps({"all": {
        "hosts": {spec.name: {"ansible_host": spec.destination} for spec in specs},
        "vars": {"ansible_ssh_common_args": f"-F {shlex.quote(str(ssh_config))}"},
    }}, indent=2))
    for name, values in per_host.items():
        _write(ansible / "host_vars" / f"{name}.json", json.dumps(values, indent=2))

    pyinfra = workdir / "pyinfra"
    pyinfra.mkdir(parents=True, exist_ok=True)
    _write(pyinfra / "hosts.json", json.dumps({
        spec.name: {"ssh_hostname": spec.destination, "ssh_config_file": str(ssh_config),
                    "fab": per_host[spec.name]} for spec in specs}, indent=2))
    _write(pyinfra / "inventory.py", PYINFRA_INVENTORY)


PYINFRA_INVENTORY = '''\
# Written by bench/compare.py prepare: the hosts and their data are in hosts.json beside this file.
import json
from pathlib import Path

hosts = list(json.loads((Path(__file__).parent / "hosts.json").read_text()).items())
'''


def _write(path: Path, text: str) -> None:
    """A private file (some hold the broker password), replaced atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    temporary.replace(path)


# --- running them ------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", **extra}
    env.pop("PYTHONPATH", None)
    return env


def ansible_run(workdir: Path, hosts: list[str]) -> tuple[list[str], dict]:
    ansible = Path(workdir).resolve() / "ansible"
    argv = [str(VENV / "bin" / "ansible-playbook"), "-i", str(ansible / "inventory.yml"),
            "--limit", ",".join(hosts), str(PLAYBOOK)]
    env = _env(ANSIBLE_CONFIG=str(ANSIBLE_CFG), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(ansible / "cp"))
    return argv, env


def pyinfra_run(workdir: Path, hosts: list[str]) -> tuple[list[str], dict]:
    pyinfra = Path(workdir).resolve() / "pyinfra"
    limits = [arg for name in hosts for arg in ("--limit", name)]
    # pyinfra logs everything (its results table too) to stderr: `sh` joins it to stdout
    argv = ["sh", "-c", 'exec "$0" "$@" 2>&1', str(VENV / "bin" / "pyinfra"), "--yes", "--sudo", *limits,
            str(pyinfra / "inventory.py"), str(PYINFRA_DEPLOY)]
    return argv, _env(PYINFRA_PROGRESS="off", NO_COLOR="1", TERM="dumb")


def close_connections(workdir: Path) -> None:
    """End Ansible's SSH control masters of this workdir (each exits when told to)."""
    control = Path(workdir).resolve() / "ansible" / "cp"
    for socket in control.glob("*") if control.is_dir() else ():
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "placeholder"],
                       capture_output=True, timeout=30)


ANSIBLE_RECAP = re.compile(r"^\S+\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
PYINFRA_TOTAL = re.compile(r"^\s*Grand total\s+(\d+|-)\s+(\d+|-)\s+(\d+|-)\s+(\d+|-)\s*$", re.M)


def changes(tool: str, output: str) -> int:
    """How many changes a run reported (its stdout + stderr); ValueError when it printed no summary."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    if tool == "ansible":
        rows = ANSIBLE_RECAP.findall(text.partition("PLAY RECAP")[2])
        if "PLAY RECAP" not in text or not rows:
            raise ValueError("no PLAY RECAP with changed= in Ansible's output")
        return sum(int(changed) for _, changed, _, _ in rows)
    if tool == "pyinfra":
        # --> Results: a row per operation (Hosts, Success = changed, Error, No Change), then Grand total
        total = PYINFRA_TOTAL.search(text.rpartition("--> Results:")[2])
        if "--> Results:" not in text or not total:
            raise ValueError("no results table with a Grand total in pyinfra's output")
        return 0 if total.group(2) == "-" else int(total.group(2))
    raise ValueError(f"unknown tool {tool!r}: ansible or pyinfra")


# --- by hand -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    usage = (f"usage: {sys.argv[0]} prepare WORKDIR INVENTORY SSH_DIR HOST... | run ansible|pyinfra WORKDIR HOST...\n"
             "(the broker password from $FABCELERY_BROKER_PASSWORD)")
    if len(argv) >= 5 and argv[0] == "prepare":
        print(json.dumps(ensure_tools()))
        prepare(Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4:], os.environ.get("FABCELERY_BROKER_PASSWORD", ""))
        return 0
    if len(argv) >= 4 and argv[0] == "run" and argv[1] in ("ansible", "pyinfra"):
        command, env = (ansible_run if argv[1] == "ansible" else pyinfra_run)(Path(argv[2]), argv[3:])
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        try:
            print(f"changes: {changes(argv[1], done.stdout + done.stderr)}")
        except ValueError as exc:
            print(f"changes: unknown ({exc})")
        return done.returncode
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
