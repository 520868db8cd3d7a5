"""The one output protocol (tasks/runner.py) and the remote programs of tasks/scripts/: loaded
from the package, joined, given their values as quoted arguments, and run here in sh."""

from __future__ import annotations

import base64
import shlex
import subprocess
from importlib import resources

import pytest

from tasks.runner import ScriptOutputError, Section, parse_sections, run_script
from tasks.scripts import inline_program, shell_program, text

SECTION_FUNCTION = text("sections.sh")


def sh(script: str) -> str:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout


def test_sections_survive_any_output(tmp_path):
    script = "\n".join([
        SECTION_FUNCTION,
        "noisy() { printf '@@end 0 x\\nline two\\n\\n'; return 3; }",
        "section first noisy",
        "section empty true",
        "section end true",
    ])
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    sections = parse_sections(out)
    assert (sections["first"].rc, sections["first"].text) == (3, "@@end 0 x\nline two")
    assert sections["empty"].ok and sections["empty"].text == ""
    with pytest.raises(ScriptOutputError, match="did not run to its end"):
        parse_sections("@@first 0 \n")


@pytest.mark.parametrize("output,sections", [
    ("@@a 0 \n@@end 0 \n", {"a": Section(0, ""), "end": Section(0, "")}),
    ("motd\n@@a 3 " + base64.b64encode(b"x y\n").decode() + "\n@@end 0 \n", {"a": Section(3, "x y\n")}),
    ("@@a 0 " + base64.b64encode("é".encode()).decode() + "\n@@end 0 \n", {"a": Section(0, "é")}),
])
def test_sections_are_read_from_their_lines_only(output, sections):
    parsed = parse_sections(output)
    assert {name: parsed[name] for name in sections} == sections


@pytest.mark.parametrize("output,error", [
    ("", "did not run to its end"),
    ("@@a 0 not*base64\n@@end 0 \n", "unreadable output line"),
    ("@@a x \n@@end 0 \n", "unreadable output line"),
    ("@@a 0 \nsh: 1: oops: not found\n", "did not run to its end"),
])
def test_output_that_is_not_the_protocol_is_refused(output, error):
    with pytest.raises(ScriptOutputError, match=error):
        parse_sections(output)


def test_kv_carries_what_the_caller_encoded_and_end_ends_the_script():
    out = sh(inline_program("printf 'a\\nb' | b64 > /tmp/.x$$; kv text \"$(printf 'a\\nb' | b64)\"\n"
                            "kv flag '' 4\nend\necho after-end"))
    sections = parse_sections(out)
    assert sections["text"] == Section(0, "a\nb") and sections["flag"] == Section(4, "")
    assert "after-end" not in out


def test_every_shell_program_ships_in_the_package():
    names = {p.name for p in resources.files("tasks.scripts").iterdir() if p.name.endswith(".sh")}
    assert {"sections.sh", "lib.sh", "workers.sh", "status-redis.sh", "status.sh", "stop.sh", "start.sh", "restart.sh",
            "shutdown.sh", "ping.sh", "logs.sh"} <= names


def test_a_program_gets_its_values_as_quoted_arguments_never_as_shell_text(tmp_path):
    evil = "it's; touch " + str(tmp_path / "pwned") + " $(id) `id`"
    program = shell_program("lib.sh", args=["--user", evil, "--venv", "/v", "--conf", "c", "--pidfile", "p",
                                            "--", "one", "two words"])
    argv = shlex.split(program)
    assert argv[:2] == ["sh", "-c"] and argv[3] == "lib.sh"        # $0: the program, in sh's messages
    assert argv[4:] == ["--user", evil, "--venv", "/v", "--conf", "c", "--pidfile", "p", "--", "one", "two words"]
    body = argv[2]
    assert body.startswith(SECTION_FUNCTION) and body.endswith("end\n") and text("lib.sh") in body
    shown = body.removesuffix("end\n") + "section got printf '%s|' \"$user\" \"$venv\" \"$#\" \"$@\"\nend\n"
    sections = parse_sections(sh(shlex.join(["sh", "-c", shown, *argv[3:]])))
    assert sections["got"].text == f"{evil}|/v|2|one|two words|"
    assert not (tmp_path / "pwned").exists()


def test_an_unknown_option_stops_the_program_before_it_does_anything():
    done = subprocess.run(["sh", "-c", shell_program("lib.sh", args=["--no-such", "x"])], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "not an option: --no-such" in done.stderr and "@@end" not in done.stdout


class FakeRemote:
    def __init__(self, stdout: str):
        self.stdout, self.calls = stdout, []

    def run_root(self, script, summary, timeout=None, bound=""):
        self.calls.append((script, summary, timeout, bound))
        return subprocess.CompletedProcess([], 0, stdout=self.stdout, stderr="")


def test_run_script_sends_one_command_and_reads_its_sections():
    remote = FakeRemote("banner\n@@a 0 " + base64.b64encode(b"hi").decode() + "\n@@end 0 \n")
    assert run_script(remote, "the script", "probe", 30, "bounds.probe")["a"] == Section(0, "hi")
    assert remote.calls == [("the script", "probe", 30, "bounds.probe")]
    with pytest.raises(ScriptOutputError):
        run_script(FakeRemote("@@a 0 \n"), "the script", "status", 30)
