"""bench/compare: what `fab deploy` does to a host, as a pyinfra deploy.

Each host's data (`fab`, from WORKDIR/pyinfra/hosts.json, written by bench/compare.py
prepare) is fabcelery's own template context plus the deploy's data (fab_* keys). The
files are rendered with fabcelery's renderer (tasks.rendering.render) from the repository's
templates/ and uploaded with files.put: pyinfra's files.template cannot take the context
as it is (its `name` is pyinfra's operation name) nor fab's two filters.

    bench/.venv-compare/bin/pyinfra --yes --sudo WORKDIR/pyinfra/inventory.py bench/compare/pyinfra/deploy.py
"""

import base64
import re
import shlex
import sys
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File, FindInFile, Sha256File
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tasks.configs import merge_managed_block  # noqa: E402 - fabcelery's block merge
from tasks.rendering import render  # noqa: E402 - fabcelery's renderer


class FileText(FactBase):
    """A file's exact text (pyinfra's FileContents gives lines, without the final newline), or None."""

    def command(self, path):
        quoted = shlex.quote(path)
        return f"if [ -f {quoted} ]; then base64 -w0 {quoted}; echo; else echo MISSING; fi"

    def process(self, output):
        text = "".join(output).strip()
        return None if text == "MISSING" else base64.b64decode(text).decode()


@operation()
def append_once(path: str, line: str, text: str):
    """Append `text` (which holds `line`) unless the file has that line. As fab adds the include
    line to redis.conf: after a blank line and a comment (files.line would add the line alone)."""
    pattern = "^" + re.sub(r"([.\[\]*^$\\])", r"\\\1", line) + "$"   # the whole line, as a basic regex
    if not host.get_fact(FindInFile, path=path, pattern=pattern):
        yield f"printf %s {shlex.quote(text)} >> {shlex.quote(path)}"


fab = host.data.fab
templates = Path(fab["fab_templates"])
changes = []   # every operation whose change needs the verify at the end


def rendered(template):
    return StringIO(render(template, fab, templates))


installed = host.get_fact(DebPackages)
changes.append(apt.packages(
    name="OS packages",
    packages=fab["fab_packages"],
    no_recommends=True,
    update=any(package not in installed for package in fab["fab_packages"]),   # only to install
))

if fab["fab_runs_celery"]:
    account = fab["fab_user"]
    server.group(name="Project group", group=account["group"], system=True)
    server.user(name="Project user", user=account["name"], group=account["group"], home=account["home"],
                shell=account["shell"], system=True, create_home=True, ensure_home=False)

for item in fab["fab_dirs"]:
    files.directory(name=f"Directory {item['path']}", path=item["path"], user=item["owner"],
                    group=item["group"], mode=item["mode"][1:])
for item in fab["fab_files"]:
    files.file(name=f"Log file {item['path']}", path=item["path"], user=item["owner"], group=item["group"],
               mode=item["mode"][1:])

broker = fab["fab_broker"]
if broker:
    if fab["password"]:
        files.put(name="The broker password, where fab keeps it", src=StringIO(fab["password"]),
                  dest=broker["password_file"], user="root", group="root", mode="600")
    fragment = files.put(name="Redis settings", src=rendered(broker["template"]), dest=broker["fragment"],
                         user="root", group=broker["group"], mode=broker["mode"][1:])
    include = append_once(name="Include them at the end of redis.conf", path=broker["conf"],
                          line=broker["include"], text=broker["include_text"])
    running = systemd.service(name="Redis enabled and running", service=broker["unit"], running=True,
                              enabled=True)
    systemd.service(name="Restart redis", service=broker["unit"], restarted=True,
                    _if=any_changed(fragment, include))
    server.shell(name="Wait for redis", commands=[broker["wait_script"]],
                 _if=any_changed(fragment, include, running))
    changes += [fragment, include, running]

if fab["fab_runs_celery"]:
    python = fab["fab_pip"]
    unit = fab["fab_unit"]
    supervisord_was_running = host.get_fact(SystemdStatus).get(unit)   # before this deploy
    files.directory(name="Virtualenv directory", path=python["virtualenv"], user=fab["project"]["user"],
                    group=fab["project"]["group"], mode="755")
    # `sudo -u` keeps the login user's umask (002 on Debian), fab's runuser has 022: without
    # `umask 022` the virtualenv's files would be group-writable (so not pip.venv)
    new_virtualenv = not host.get_fact(File, path=f"{python['virtualenv']}/bin/activate")
    if new_virtualenv:
        server.shell(name="Virtualenv", commands=[f"umask 022 && python3 -m venv {shlex.quote(python['virtualenv'])}"],
                     _sudo_user=fab["project"]["user"])

    # fab's record of what pip installed: pip runs only when the virtualenv is new or it changes
    stamp = python["stamp_head"]
    if python["requirements"]:
        checksum = host.get_fact(Sha256File, path=python["requirements"])
        if not checksum:
            raise DeployError(f"{python['requirements']} (project.requirements) is not on the host")
        stamp += python["stamp_requirements"] % checksum
    if new_virtualenv or host.get_fact(FileText, path=python["stamp"]) != stamp:
        # one pip run, as fab's: pip.packages would run -r FILE and the pins separately
        changes.append(server.shell(
            name="Supervisor and celery in the virtualenv",
            commands=["umask 022 && " + shlex.join([f"{python['virtualenv']}/bin/pip", "install", *python["args"]])],
            _sudo_user=fab["project"]["user"],
        ))
        files.put(name="Record what pip installed", src=StringIO(stamp), dest=python["stamp"], user="root",
                  group="root", mode="644")

    # supervisord's own config and unit first, then the program files (operations in loops line
    # up across hosts by their call count: the files every host has come first)
    main, programs, removed = [], {}, []
    slots = sorted(fab["fab_config_slots"], key=lambda item: bool(item["programs"]))
    for item in slots:
        if not item["present"]:   # a program of a role this host does not have
            removed.append(files.file(name=f"No {item['target']}", path=item["target"], present=False))
            continue
        op = files.put(name=f"Config {item['target']}", src=rendered(item["template"]), dest=item["target"],
                       user=item["owner"], group=item["group"], mode=item["mode"][1:])
        if item["programs"]:
            programs.update({program: op for program in item["programs"]})
        else:
            main.append(op)
        if item["target"].endswith(".service"):
            unit_file = op

    settings = fab["fab_settings_local"]
    settings_state = host.get_fact(File, path=settings)
    settings_local = files.put(
        name="Broker settings in settings_local.py",
        src=StringIO(merge_managed_block(host.get_fact(FileText, path=settings),
                                         render("settings_local.block.j2", fab, templates))),
        dest=settings, user=settings_state["user"] if settings_state else "root", group=fab["project"]["group"],
        mode="640",
    )
    changes += [*main, *programs.values(), *removed, settings_local]

    systemd.daemon_reload(name="Reload systemd", _if=unit_file.did_change)
    started = systemd.service(name="Supervisord enabled and running", service=unit, running=True, enabled=True)
    changes.append(started)
    if supervisord_was_running:
        # as fab: a restart only when supervisord's own files changed; else reread/update of the
        # changed programs, and a restart of the others when settings_local.py changed
        ctl = fab["fab_supervisorctl"]
        restart = systemd.service(name="Restart supervisord", service=unit, restarted=True, _if=any_changed(*main))
        server.shell(
            name="Update programs", commands=[f"{ctl} reread >/dev/null && {ctl} update"],
            _if=lambda: not restart.did_change() and any(op.did_change() for op in [*programs.values(), *removed]),
        )
        for program, op in programs.items():
            server.shell(
                name=f"Restart {program}", commands=[f"{ctl} restart {program}"],
                _if=lambda op=op: settings_local.did_change() and not restart.did_change() and not op.did_change(),
            )
    server.shell(name="Wait until the programs run and the worker answers ping",
                 commands=[fab["fab_verify_script"]], _if=any_changed(*changes))
