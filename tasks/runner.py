"""Running a remote script and reading what it printed: one protocol for the deploy's probe
and every day-two program.

A script prints its findings as sections, one line each, ``@@NAME EXIT_STATUS BASE64_OUTPUT``
(tasks/scripts/sections.sh), so that whatever a command prints (a worker's log, an error, a
file's content) cannot be mistaken for the script's own structure; its last line,
``@@end 0 ``, proves that it ran to its end. A script is one remote command, run as root in
one shell over the host's one SSH connection (Remote.run_root).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .remote import Remote

END = "end"


class ScriptOutputError(Exception):
    """The script's output could not be read (it did not run to its end)."""


@dataclass(frozen=True)
class Section:
    rc: int
    text: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


Sections = dict[str, Section]


def parse_sections(output: str) -> Sections:
    """Every `@@NAME RC BASE64` line of the output; any other line (a login banner) is passed over."""
    sections = {}
    for line in output.splitlines():
        if not line.startswith("@@"):
            continue
        name, _, rest = line[2:].partition(" ")
        rc, _, encoded = rest.partition(" ")
        try:
            text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "replace")
            sections[name] = Section(int(rc), text)
        except (binascii.Error, ValueError):
            raise ScriptOutputError(f"unreadable output line {line[:80]!r}") from None
    if END not in sections:
        raise ScriptOutputError("the script did not run to its end" + (f" (output: {output.strip()[-300:]!r})"
                                                                        if output.strip() else ""))
    return sections


def run_script(remote: Remote, script: str, summary: str, timeout: int, bound: str = "") -> Sections:
    """Send one script (tasks.scripts.shell_program, or the probe), read its sections.

    The script itself succeeds (its sections tell what failed); a failure of its own, or an
    output that does not end with `end`, raises HostError or ScriptOutputError."""
    return parse_sections(remote.run_root(script, summary, timeout=timeout, bound=bound).stdout)
