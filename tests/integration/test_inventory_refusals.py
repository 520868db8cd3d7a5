"""An inventory that must never reach a server is refused before anything connects (issue 24):
root as the project's user or group, a system directory as its path or virtualenv, a key
given twice, a byte that is not UTF-8, names and paths longer than the servers take.

`fab deploy` with each: exit status 2, one paragraph naming the file, the key or line and
the rule, no traceback; and the server's sshd saw no login at all, while the same host with
a good inventory is logged in to (the control: the count does count).
"""

from __future__ import annotations

import time

import pytest

from .conftest import SUITES, Project, wait_for

GOOD = """\
project:
  name: demo_proj
  path: /opt/arches/demo_proj
  virtualenv: /opt/arches/venv
  user: arches
broker:
  kind: redis
celery:
  app: demo_proj.celery
hosts:
  {name}:
    roles: [broker, worker, beat]
"""
# (what is wrong, how the good inventory is changed, what the paragraph says)
REFUSED = [
    ("a Latin-1 byte in a comment", lambda t: t.replace("broker:\n", "# café\nbroker:\n").encode("latin-1"),
     ["line 6 (0xe9 at column 6) holds a byte that is not UTF-8", "save the file as UTF-8"]),
    ("the same host named twice", lambda t: t + "    port: 2222\n  {name}:\n    roles: [worker]\n",
     ["'hosts.{name}' is given twice, at lines 11 and 14"]),
    ("root as the user", lambda t: t.replace("user: arches", "user: root"),
     ["line 5: 'project.user' is root: ", "must never be root"]),
    ("uid 0 as the group", lambda t: t.replace("user: arches", "user: arches\n  group: 0"),
     ["line 6: 'project.group' is root (0 is root's id)"]),
    ("/usr as the virtualenv", lambda t: t.replace("/opt/arches/venv", "/usr"),
     ["line 4: 'project.virtualenv' is /usr, a system directory itself"]),
    ("/usr/local/ as the virtualenv", lambda t: t.replace("/opt/arches/venv", "/usr/local/"),
     ["'project.virtualenv' is /usr/local (as '/usr/local/' reads), a system directory itself"]),
    ("/opt/../etc as the path", lambda t: t.replace("/opt/arches/demo_proj", "/opt/../etc"),
     ["line 3: 'project.path' is /etc (as '/opt/../etc' reads), a system directory itself"]),
    ("a path inside /etc", lambda t: t.replace("/opt/arches/demo_proj", "/etc/demo_proj"),
     ["'project.path' is /etc/demo_proj, which lies inside /etc, a directory that holds the system's own files"]),
    ("a 5000-character name", lambda t: t.replace("name: demo_proj", "name: " + "d" * 5000),
     ["line 2: 'project.name' is 5000 characters long", "at most 75"]),
    ("a 5000-character path", lambda t: t.replace("/opt/arches/demo_proj", "/opt/" + "p" * 4995),
     ["line 3: 'project.path' is 5000 bytes long", "at most 4095 bytes"]),
    ("a 33-character user", lambda t: t.replace("user: arches", "user: " + "u" * 33),
     ["line 5: 'project.user' is 33 characters long", "at most 32"]),
]


@pytest.fixture(scope="module", params=list(SUITES))
def host(request, fleet, tmp_path_factory):
    name = f"refuse{SUITES[request.param][-2:]}"
    host = fleet.start(name, suite=request.param)
    project = Project(fleet, tmp_path_factory.mktemp(name), {name: {"roles": ["broker", "worker", "beat"]}})
    yield {"fleet": fleet, "host": host, "name": name, "project": project}
    fleet.remove(host)


def logins(state) -> int:
    """SSH logins the server has seen (sshd's journal)."""
    out = state["fleet"].exec(state["host"], "journalctl -q -u ssh --no-pager | grep -c 'Accepted publickey' || true")
    return int(out.stdout.strip())


def test_a_refused_inventory_opens_no_connection_and_says_why_in_one_paragraph(host):
    name, project = host["name"], host["project"]
    before = logins(host)
    for what, change, said in REFUSED:
        text = GOOD.format(name=name)
        raw = change(text)
        raw = raw.encode() if isinstance(raw, str) else raw
        project.inventory_path.write_bytes(raw.replace(b"{name}", name.encode()))
        run = project.fab("-H", name, "deploy")
        assert run.returncode == 2, what
        assert "Traceback" not in run.output, what
        paragraph = run.output.strip()
        assert "\n" not in paragraph, what          # one paragraph, nothing else
        assert paragraph.startswith(f"{project.inventory_path}: "), what
        assert paragraph.endswith("Fix the inventory and run again; nothing was changed."), what
        for words in said:
            assert words.replace("{name}", name) in paragraph, what
    time.sleep(1)   # sshd's journal lines of a login would be there by now (the control below waits < 1 s)
    assert logins(host) == before
    # nothing of a deploy is on the server either
    assert host["fleet"].exec(host["host"], "id arches || test -e /usr/pyvenv.cfg", check=False).returncode != 0

    # the control: the same host with the good inventory is logged in to, and the count shows it
    project.inventory_path.write_text(GOOD.format(name=name))
    run = project.fab("-H", name, "deploy", "--dry-run")
    assert run.returncode in (0, 1), run.output      # connected and probed; a fresh host may lack the project
    assert wait_for(lambda: logins(host) > before, 10)
