"""The probe: its sh script runs on a real Debian shell here, and its answer parses."""

import base64
import subprocess

from tasks.probe import ProbeSpec, parse_dists, parse_os_release, parse_probe, probe_script
from tasks.runner import parse_sections

from .conftest import probe_output


def test_probe_script_runs_in_sh_and_reports_this_machine(tmp_path):
    (tmp_path / "dir").mkdir(mode=0o750)
    managed = tmp_path / "file.conf"
    managed.write_text("hello\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "python").chmod(0o755)
    (venv / "lib" / "python3.13" / "site-packages" / "celery-5.6.3.dist-info").mkdir(parents=True)
    (venv / "lib" / "python3.13" / "site-packages" / "Django-5.2.1.dist-info").mkdir(parents=True)
    spec = ProbeSpec(
        paths=(str(tmp_path / "dir"), str(tmp_path / "missing")),
        checksums=(str(managed), str(tmp_path / "missing.conf")),
        contents=(str(managed),),
        packages=("coreutils", "surely-not-a-package"),
        users=("root", "nosuchuser"),
        groups=("root",),
        virtualenv=str(venv),
    )
    out = subprocess.run(["sh", "-c", probe_script(spec)], capture_output=True, text=True, check=True).stdout
    parse_sections(out)  # well-formed sections, whatever the host prints
    facts = parse_probe(out)
    assert facts.os["id"] == "debian"
    assert facts.installed("coreutils") and not facts.installed("surely-not-a-package")
    assert facts.users["root"]["home"] == "/root" and "nosuchuser" not in facts.users
    assert "root" in facts.groups
    state = facts.paths[str(tmp_path / "dir")]
    assert (state.kind, state.mode) == ("directory", "750")
    assert facts.paths.get(str(tmp_path / "missing")) is None and str(tmp_path / "missing") not in facts.paths
    assert facts.checksums[str(managed)] == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert facts.checksums.get(str(tmp_path / "missing.conf")) is None
    assert facts.contents[str(managed)] == "hello\n"
    assert facts.venv_python
    assert facts.dists == {"celery": "5.6.3", "django": "5.2.1"}


def test_probe_answer_after_noise_is_found():
    facts = parse_probe("motd line\n" + probe_output(os_release='ID=debian\nVERSION_ID="12"\n', pid1="systemd"))
    assert facts.os == {"id": "debian", "version_id": "12"} and facts.systemd


def test_os_release_and_dists_parsing():
    assert parse_os_release("NAME='Ubuntu'\n# c\nID=ubuntu\nID_LIKE=debian\n")["id_like"] == "debian"
    assert parse_dists("python3.11/site-packages/kombu-5.7.0.dist-info\npython3.11/site-packages/"
                       "typing_extensions-4.12.2.dist-info\n") == {"kombu": "5.7.0", "typing-extensions": "4.12.2"}


def test_probe_reads_units_from_one_systemctl_show():
    names = ["redis-server.service", "demo-supervisord.service"]
    key = "units:" + base64.b64encode("\n".join(names).encode()).decode()
    shown = "UnitFileState=enabled\nActiveState=active\n\nUnitFileState=\nActiveState=inactive\n"
    facts = parse_probe(probe_output(pid1="systemd", **{key: shown}))
    assert facts.service_enabled("redis-server.service") and facts.service_active("redis-server.service")
    assert not facts.service_enabled("demo-supervisord.service")
    assert facts.services["demo-supervisord.service"] == {"enabled": "", "active": "inactive"}
    # a block short (systemctl failed half-way): no unit is taken as known
    short = "UnitFileState=enabled\nActiveState=active\n"
    assert parse_probe(probe_output(**{key: short})).services == {}


def test_probe_batches_stat_and_sha256_and_keeps_odd_names(tmp_path):
    odd = tmp_path / "a b|c.conf"
    odd.write_text("x")
    spec = ProbeSpec(paths=(str(odd), str(tmp_path), str(tmp_path / "gone")), checksums=(str(odd),))
    script = probe_script(spec)
    assert script.count("stat -c") == 1 and script.count("sha256sum") == 1
    facts = parse_probe(subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout)
    assert facts.paths[str(odd)].kind == "file" and facts.paths[str(tmp_path)].kind == "directory"
    assert str(tmp_path / "gone") not in facts.paths
    assert facts.checksums[str(odd)] == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
