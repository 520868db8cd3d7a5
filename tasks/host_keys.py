"""Host keys, checked as OpenSSH checks them: known_hosts files (ssh_config's
UserKnownHostsFile, else ~/.ssh/known_hosts, and the system's), an unknown key refused
(StrictHostKeyChecking=yes) unless the user opts in to record a new one (accept-new); a changed
key is always refused. Fabric's own default accepts any key (fabric#2071): not here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeys, InvalidHostKey

GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")



class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"{hostname} is not in known_hosts")
        self.hostname, self.key = hostname, key



def fingerprint(key: paramiko.PKey) -> str:
    """As `ssh-keygen -l` and ssh print it: SHA256:base64, no padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")



def known_hosts_entry(host: str, port: int) -> str:
    """The name a host's key is recorded under: `host`, or `[host]:port` off port 22 (as OpenSSH)."""
    return host if int(port) == 22 else f"[{host}]:{port}"



class RefuseUnknownPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking=yes: a host whose key is not recorded is refused."""

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(hostname, key)



class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Like OpenSSH's StrictHostKeyChecking=accept-new: record the key of a host seen for the
    first time. A host with any key recorded never gets here (paramiko raises
    BadHostKeyException for a key of another value or type): a changed key is refused."""

    _lock = threading.Lock()   # hosts connect concurrently; their lines go to one file

    def __init__(self, known_hosts: Path, recorded: Callable[[Path, str, paramiko.PKey], None] | None = None):
        self.known_hosts = known_hosts
        self.recorded = recorded   # told of each key recorded (the run's known_hosts, tasks/connections.py)

    def missing_host_key(self, client, hostname, key):
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with self._lock:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                if size and os.pread(f.fileno(), 1, size - 1) != b"\n":
                    line = "\n" + line   # the last line has no newline: do not glue ours onto it
                f.write(line.encode())
            if self.recorded is not None:
                self.recorded(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)



def known_hosts_files(ssh_config: dict) -> list[Path]:
    """UserKnownHostsFile from ssh_config (several, space-separated), or ~/.ssh/known_hosts."""
    value = ssh_config.get("userknownhostsfile")
    names = value.split() if isinstance(value, str) else list(value or [])
    return [Path(os.path.expanduser(n)) for n in names if n.lower() != "none"] \
        or [Path.home() / ".ssh" / "known_hosts"]



def records_key(path: Path, entry: str) -> bool:
    try:
        return path.is_file() and bool(HostKeys(str(path)).lookup(entry))
    except (OSError, UnicodeDecodeError, InvalidHostKey):
        return False

