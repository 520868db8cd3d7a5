"""`fab`, with a count of its SSH connections and remote commands (for bench/bench.py).

    python bench/count_ssh.py FILE [fab arguments...]

Runs fab in this process with paramiko's handshake and channel requests counted, and
writes the counts as JSON to FILE when fab exits: every SSH connection starts a
client handshake (Transport.start_client), every remote command is an exec request
(Channel.exec_command), every file transfer an SFTP subsystem (invoke_subsystem).
"""

from __future__ import annotations

import atexit
import json
import sys
from collections import Counter

import paramiko

counts: Counter = Counter()


def counted(cls, name: str, key: str) -> None:
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        counts[key] += 1
        return original(self, *args, **kwargs)

    setattr(cls, name, wrapper)


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    counted(paramiko.Transport, "start_client", "connections")
    counted(paramiko.Channel, "exec_command", "commands")
    counted(paramiko.Channel, "invoke_subsystem", "subsystems")
    atexit.register(lambda: open(out, "w").write(json.dumps(dict(counts))))

    from fabric.main import program

    program.run(["fab", *argv])


if __name__ == "__main__":
    main()
