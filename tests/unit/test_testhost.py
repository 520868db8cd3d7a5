"""The test-host harness (testhost/): its package caches, which it points each host at
(on the ports that testhost/setup.sh starts them on, in files of the host's own
configuration), and its errors, which say why."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from testhost import harness

SETUP = Path(harness.__file__).with_name("setup.sh")


@pytest.mark.parametrize(("variable", "port"), [("APT_CACHE_PORT", harness.APT_CACHE_PORT),
                                                 ("PIP_CACHE_PORT", harness.PIP_CACHE_PORT)])
def test_setup_starts_the_caches_on_the_ports_the_harness_uses(variable, port):
    assert re.findall(rf"^{variable}=(\d+)$", SETUP.read_text(), re.M) == [str(port)]


def test_a_hosts_apt_and_pip_go_to_the_gateway():
    apt_conf, pip_conf = harness.package_cache_config("10.88.0.1")
    assert re.findall(r'^Acquire::http::Proxy "(.*)";$', apt_conf, re.M) == ["http://10.88.0.1:3143"]
    settings = dict(re.findall(r"^([a-z-]+) = (.*)$", pip_conf, re.M))
    assert settings == {"index-url": "http://10.88.0.1:3144/index/", "trusted-host": "10.88.0.1:3144"}
    assert pip_conf.splitlines()[1] == "[global]"


def test_pip_reads_the_hosts_pip_conf(tmp_path):
    """pip itself takes index-url and trusted-host from the file the harness writes."""
    _apt_conf, pip_conf = harness.package_cache_config("10.88.0.1")
    (tmp_path / "pip.conf").write_text(pip_conf)
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True, text=True, env={"PIP_CONFIG_FILE": str(tmp_path / "pip.conf"), "PATH": "/usr/bin"},
        check=True,
    ).stdout
    assert "global.index-url='http://10.88.0.1:3144/index/'" in listed
    assert "global.trusted-host='10.88.0.1:3144'" in listed


def test_a_failed_command_shows_its_status_and_stderr():
    with pytest.raises(harness.CommandFailed) as failed:
        harness._run(["sh", "-c", "echo some output; echo container state improper >&2; exit 125"], timeout=30)
    assert str(failed.value).splitlines() == [
        "`sh -c 'echo some output; echo container state improper >&2; exit 125'` exited with status 125",
        "--- stdout ---", "some output", "--- stderr ---", "container state improper"]


def fake_podman(answers, calls):
    def podman(*args, check=True, timeout=harness.PODMAN_TIMEOUT):
        calls.append(args)
        returncode, stderr = answers.pop(0)
        return subprocess.CompletedProcess(["podman", *args], returncode, "", stderr)
    return podman


FREEZE = 'level=error msg="unable to freeze"\nError: `/usr/bin/runc pause ID` failed: exit status 1\n'


@pytest.mark.parametrize(("answers", "pauses", "error"), [
    ([(0, "")], 1, None),
    ([(125, FREEZE), (125, FREEZE), (0, "")], 3, None),                 # runc thawed it: tried again
    ([(125, FREEZE)] * harness.PAUSE_ATTEMPTS, harness.PAUSE_ATTEMPTS, "unable to freeze"),
    ([(125, "Error: \"h\" is not running, can't pause: container state improper\n")], 1, "state improper"),
])
def test_pause_tries_again_only_when_the_freezer_did_not_settle(tmp_path, monkeypatch, answers, pauses, error):
    calls: list = []
    monkeypatch.setattr(harness, "_podman", fake_podman(list(answers), calls))
    monkeypatch.setattr(harness.time, "sleep", lambda seconds: None)
    fleet = harness.Fleet(tmp_path, "unit")
    fleet.hosts["h"] = harness.TestHost("h", "trixie", "fabcelery-unit-h", 2222, "10.88.200.1")
    if error is None:
        fleet.pause("h")
    else:
        with pytest.raises(harness.CommandFailed) as failed:
            fleet.pause("h")
        assert "exited with status 125" in str(failed.value) and error in str(failed.value)
    assert calls == [("pause", "fabcelery-unit-h")] * pauses


PORT_TAKEN = "Error: cannot listen on the TCP port: listen tcp4 127.0.0.1:38801: bind: address already in use\n"
IP_TAKEN = "Error: IPAM error: requested ip address 10.88.200.9 is already allocated to container ID 1\n"


@pytest.mark.parametrize(("answers", "runs", "error"), [
    ([(0, "")], 1, None),
    ([(126, PORT_TAKEN), (0, "")], 2, None),        # an SSH client took the port podman had found free
    ([(125, IP_TAKEN), (126, PORT_TAKEN), (0, "")], 3, None),
    ([(126, PORT_TAKEN)] * 5, 5, "no free address or SSH port"),
    ([(125, "Error: image not known\n")], 1, "image not known"),
])
def test_a_host_is_run_again_only_when_its_address_or_port_was_taken(tmp_path, monkeypatch, answers, runs, error):
    calls: list = []
    monkeypatch.setattr(harness, "_podman", fake_podman(list(answers), calls))
    monkeypatch.setattr(harness, "_remove_containers", lambda containers, check=False: None)
    fleet = harness.Fleet(tmp_path, "unit")
    monkeypatch.setattr(fleet, "_pick_internal_ip", lambda: "10.88.200.9")
    if error is None:
        assert fleet._run_container("h", "trixie", "fabcelery-unit-h", "image") == "10.88.200.9"
    else:
        with pytest.raises((harness.CommandFailed, harness.HarnessError)) as failed:
            fleet._run_container("h", "trixie", "fabcelery-unit-h", "image")
        assert error in str(failed.value)
    assert [c[0] for c in calls] == ["run"] * runs


# --- snapshot images: held while used, pruned when no longer -----------------------------------

def test_prune_removes_only_images_no_run_holds_unused_for_long_that_no_container_uses(tmp_path, monkeypatch):
    """A run's snapshot images are held (a shared lock on a file under IMAGE_USE_DIR, the file's
    time their last use); the others are removed, unless used or made lately or in use by a
    container (podman refuses: the image stays)."""
    monkeypatch.setattr(harness, "IMAGE_USE_DIR", tmp_path)
    monkeypatch.setattr(harness, "_held_images", {})
    repo, hours_ago = "localhost/snap", harness.time.time() - 7200
    names = ("current", "held", "used-lately", "made-lately", "old", "in-a-container")
    entries = [{"Names": [f"{repo}:{name}"], "Created": hours_ago} for name in names]
    entries[names.index("made-lately")]["Created"] = harness.time.time()
    entries.append({"Names": ["localhost/other:old"], "Created": hours_ago})       # another repository
    monkeypatch.setattr(harness, "_podman_json", lambda *args: entries)
    removed_by_podman = []

    def podman(*args, check=True, timeout=harness.PODMAN_TIMEOUT):
        assert args[0] == "rmi", args
        if args[1].endswith("in-a-container"):
            return subprocess.CompletedProcess(args, 2, "", "image is in use by a container")
        removed_by_podman.append(args[1])
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(harness, "_podman", podman)
    harness.hold_image(f"{repo}:held")
    harness.os.utime(harness._image_use_path(f"{repo}:held"), (hours_ago, hours_ago))  # held for hours
    harness._image_use_path(f"{repo}:used-lately").touch()
    removed = harness.prune_images(repo, [f"{repo}:current"], unused_for=3600)
    assert removed == removed_by_podman == [f"{repo}:old"]
    assert not harness._image_use_path(f"{repo}:old").exists()
    assert not harness._image_use_path(f"{repo}:in-a-container").exists()     # made only to lock it
    assert harness._image_use_path(f"{repo}:held").exists()
