"""The thin SSH layer: connect with checked host keys, run scripts as root, upload files.

Fabric accepts any host key by default (fabric#2071); here an unknown key is refused
unless the user opts in, and a changed key is always refused, before any command runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
from fabric import Config, Connection
from invoke.exceptions import Failure, UnexpectedExit

from .inventory import HostSpec
from .plan import Upload
from .shell import cmd, sh_c

CONNECT_TIMEOUT = 10


class HostError(Exception):
    """Something went wrong on or with a host; the message is for the user, no traceback."""


class RemoteCommandError(HostError):
    def __init__(self, summary: str, output: str):
        super().__init__(f"{summary}: {output}" if output else summary)
        self.output = output


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Like OpenSSH's StrictHostKeyChecking=accept-new: record an unknown key, refuse a changed one."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def known_hosts_files(ssh_config: dict) -> list[Path]:
    """UserKnownHostsFile from ssh_config (several, space-separated), or ~/.ssh/known_hosts."""
    value = ssh_config.get("userknownhostsfile")
    names = value.split() if isinstance(value, str) else list(value or [])
    return [Path(os.path.expanduser(n)) for n in names] or [Path.home() / ".ssh" / "known_hosts"]


class Remote:
    """One host's connection; every command in the deploy goes through here."""

    def __init__(self, spec: HostSpec, config: Config | None = None, accept_new_host_keys: bool = False,
                 secrets: tuple[str, ...] = ()):
        self.spec = spec
        self.accept_new_host_keys = accept_new_host_keys
        self.secrets = secrets
        self.conn = Connection(
            host=spec.destination,
            user=spec.user,
            port=spec.port,
            config=config or Config(),
            connect_timeout=CONNECT_TIMEOUT,
        )

    @property
    def label(self) -> str:
        return self.spec.name

    def open(self) -> None:
        client = self.conn.client
        files = known_hosts_files(self.conn.ssh_config)
        for path in files:
            if path.exists():
                client.load_host_keys(str(path))
        if self.accept_new_host_keys:
            client.set_missing_host_key_policy(AcceptNewPolicy(files[0]))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        target = f"{self.conn.host}:{self.conn.port}"
        try:
            self.conn.open()
        except paramiko.BadHostKeyException:
            raise HostError(
                f"the host key of {target} has CHANGED since it was recorded in {files[0]}. This may be "
                "another server answering at that address (or the server was reinstalled). Refusing to "
                f"connect. If the change is expected, remove the old key: ssh-keygen -R '[{self.conn.host}]:"
                f"{self.conn.port}' -f {files[0]}"
            ) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostError(
                    f"the host key of {target} is not known (looked in {', '.join(map(str, files))}). "
                    f"Check it and add it (ssh-keyscan -p {self.conn.port} {self.conn.host} >> {files[0]}), "
                    "or run again with --accept-new-host-keys to record it on first use"
                ) from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise HostError(f"SSH login to {self.conn.user}@{target} was refused ({exc})") from None
            raise HostError(f"SSH to {target} failed: {exc}") from None
        except TimeoutError:
            raise HostError(f"no answer from {target} within {CONNECT_TIMEOUT} s") from None
        except (OSError, paramiko.ssh_exception.NoValidConnectionsError) as exc:
            reason = exc.strerror if getattr(exc, "strerror", None) else str(exc)
            raise HostError(f"cannot connect to {target}: {reason}") from None

    def close(self) -> None:
        self.conn.close()

    @property
    def is_root(self) -> bool:
        return self.conn.user == "root"

    def run_root(self, script: str, summary: str, timeout: int | None = None, check: bool = True):
        """Run a script as root in one shell (sudo covers all of it)."""
        command = sh_c(script)
        password = self.conn.config.sudo.password
        try:
            if self.is_root:
                result = self.conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
            elif password:
                result = self.conn.sudo(command, hide=True, warn=True, in_stream=False, timeout=timeout)
            else:
                # -n: fail at once rather than wait for a password nobody will type
                result = self.conn.run("sudo -n -H " + command, hide=True, warn=True, in_stream=False,
                                       timeout=timeout)
        except (UnexpectedExit, Failure) as exc:
            raise RemoteCommandError(summary, self.mask(str(exc))) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise HostError(f"{summary}: the connection failed ({exc})") from None
        if check and result.exited != 0:
            output = (result.stderr.strip() or result.stdout.strip())
            if "a password is required" in output or "a terminal is required" in output:
                raise HostError(
                    f"sudo on this host needs a password: run again with --prompt-for-sudo-password, "
                    f"or give {self.conn.user} passwordless sudo"
                )
            tail = "\n".join(output.splitlines()[-20:])
            raise RemoteCommandError(summary, self.mask(tail) or f"exit status {result.exited}")
        return result

    def upload_private(self, uploads: tuple[Upload, ...]) -> str:
        """Copy file contents into a fresh directory only the login user can read; returns its path.

        SFTP, not the command line: contents may hold a password.
        """
        tmpdir = self.conn.run("mktemp -d", hide=True, in_stream=False).stdout.strip()
        sftp = self.conn.sftp()
        for index, upload in enumerate(uploads):
            with sftp.open(f"{tmpdir}/{index}", "w") as remote_file:
                remote_file.chmod(0o600)
                remote_file.write(upload.content.encode())
        return tmpdir

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "********")
        return text


def install_script(tmpdir: str, uploads: tuple[Upload, ...], python: str) -> str:
    """Stage each upload beside its target (restrictive mode from the start), validate, then rename.

    A file that fails validation is never installed; an interrupted run leaves only
    hidden staging files, which the next run overwrites.
    """
    from .supervisor import validate_command

    staged = []
    lines = ["set -e"]
    for index, upload in enumerate(uploads):
        directory, _, base = upload.target.rpartition("/")
        stage = f"{directory}/.{base}.fabcelery-new"
        staged.append(stage)
        lines.append(cmd("install", "-o", upload.owner, "-g", upload.group, "-m", upload.mode,
                         f"{tmpdir}/{index}", stage))
    lines.insert(1, "trap " + cmd("rm -rf " + " ".join(cmd(p) for p in [tmpdir, *staged])) + " EXIT")
    checks = [("main" if u.target.endswith("-supervisord.conf") else "programs", stage)
              for u, stage in zip(uploads, staged, strict=True) if u.validate == "supervisor"]
    if checks:
        lines.append(validate_command(python, checks))
    for upload, stage in zip(uploads, staged, strict=True):
        lines.append(cmd("mv", "-f", stage, upload.target))
    return "\n".join(lines)
