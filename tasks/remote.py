"""The thin SSH layer: connect with checked host keys, run scripts as root, upload files.

Fabric accepts any host key by default (fabric#2071); here an unknown key is refused
unless the user opts in (--accept-new-host-keys, like OpenSSH's
StrictHostKeyChecking=accept-new), and a changed key is always refused, before any
command runs. Jump hosts (ProxyJump) are checked the same way.
"""

from __future__ import annotations

import functools
import re
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from fabric import Config, Connection
from invoke.exceptions import (
    AuthFailure,
    CommandTimedOut,
    Failure,
    ResponseNotAccepted,
    ThreadException,
    UnexpectedExit,
)
from invoke.watchers import FailingResponder

from .bounds import DEFAULT, KEEPALIVE_COUNT, KILL_AFTER, Bounds, local_bound, timed_out
from .connections import WATCHDOG, shared_ssh
from .host_errors import LOST, ConnectionLost, HostError, RemoteCommandError, command_error
from .host_keys import (
    GLOBAL_KNOWN_HOSTS,
    AcceptNewPolicy,
    RefuseUnknownPolicy,
    UnknownHostKey,
    fingerprint,
    known_hosts_entry,
    known_hosts_files,
    records_key,
)
from .inventory import HostSpec
from .plan import Upload
from .report import mask_lines, mask_secrets
from .shell import cmd, sh_c, through_private_file
from .streams import ProgressStream, ReadyStream

CONNECT_TIMEOUT = DEFAULT.connect
UPLOAD_PREFIX = "/tmp/fabcelery-upload."
# a script run through sudo (Remote._command); removed when it ends
RUN_FILE_PREFIX = "/tmp/fabcelery-run."
STALE_UPLOAD_MINUTES = 10   # an upload lives for seconds: one this old was left by a deploy cut off


def connected(remote: Remote, say, result) -> bool:
    """Open the host's connection; when it cannot be opened, the host's `connect` line says
    why and `result` (a HostResult) records the failure."""
    try:
        remote.open()
    except HostError as exc:
        say("connect", f"failed: {exc}")
        result.failed, result.error = 1, str(exc)
        return False
    return True


def _connections(conn: Connection):
    """The connection and its jump hosts (ProxyJump), each of which is checked the same way."""
    while isinstance(conn, Connection):
        yield conn
        conn = conn.gateway


class _Connection(Connection):
    """Fabric's Connection, whose __init__ does not write into the configuration it is given.

    Connection.__init__ sets `self.inline_ssh_env`, which is no attribute of its class, so
    Invoke's DataProxy takes it for a configuration key: it writes it into the shared
    configuration and merges that again from nothing, under the feet of the hosts reading it
    meanwhile (seen: "No attribute or config key found for 'authentication'" on one host of
    three, in a host's open()). As an attribute of the class it stays the connection's own."""

    inline_ssh_env = None


class Remote:
    """One host's connection; every command in the deploy goes through here."""

    def __init__(self, spec: HostSpec, config: Config | None = None, accept_new_host_keys: bool = False,
                 secrets: tuple[str, ...] = (), bounds: Bounds | None = None):
        self.spec = spec
        self.accept_new_host_keys = accept_new_host_keys
        self.secrets = secrets
        self.bounds = bounds or DEFAULT
        self.reached = False        # open() succeeded once (the host answered and we logged in)
        self.silent = ""            # set by the keepalive watchdog when the host stopped answering
        self._last_heard = time.monotonic()
        self._held = None           # (promise, its waiting thread): a command start_root keeps running
        # wrap_each(command, summary): a script around every later run_root command that has no
        # wrap of its own (tasks/lock.py records a locked run's commands so)
        self.wrap_each: Callable[[str, str], str] | None = None
        # the run's configuration, ssh_config and known_hosts, shared by its hosts (tasks/connections.py)
        self.shared = shared_ssh(config if config is not None else Config())
        # a Connection writes into the connect_kwargs it is given (the host's IdentityFile, our
        # timeouts): its own dict, never the shared configuration's. key_filename stays out:
        # Fabric adds the configuration's keys to the host's itself.
        connect_kwargs = {k: v for k, v in self.shared.config.connect_kwargs.items() if k != "key_filename"}
        # a host that accepts the TCP connection but says nothing (frozen, paused) is given
        # up after the same bound, not paramiko's 15 s (banner) and 30 s (auth)
        connect_kwargs.setdefault("banner_timeout", self.bounds.connect)
        connect_kwargs.setdefault("auth_timeout", self.bounds.connect)
        self.conn = _Connection(
            host=spec.destination,
            user=spec.user,
            port=spec.port,
            config=self.shared.config,
            connect_timeout=self.bounds.connect,
            connect_kwargs=connect_kwargs,
        )

    @property
    def label(self) -> str:
        return self.spec.name

    @property
    def sudo_password(self) -> str | None:
        return self.conn.config.sudo.password or None

    def open(self) -> None:
        """Connect, with the host keys checked before anything is sent; every failure is one HostError."""
        for hop in _connections(self.conn):
            self._check_host_keys(hop)
        target = f"{self.conn.host}:{self.conn.port}"
        started = time.monotonic()
        try:
            self.conn.open()
        except UnknownHostKey as exc:
            files = known_hosts_files(self.conn.ssh_config)
            host, _, port = exc.hostname.removeprefix("[").partition("]:")
            raise HostError(
                f"the host key of {exc.hostname} is not known: the server offers {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, and {', '.join(map(str, files))} has no key for it. Nothing was run "
                f"there. Check that fingerprint with the server's administrator, then record it: ssh-keyscan "
                f"-p {port or 22} {host} >> {files[0]} (keep only the checked key), or run again with "
                "--accept-new-host-keys to record it on first use"
            ) from None
        except paramiko.BadHostKeyException as exc:
            files = known_hosts_files(self.conn.ssh_config)
            entry = (known_hosts_entry(self.conn.host, self.conn.port) if exc.hostname == self.conn.host
                     else exc.hostname)
            recorded = next((f for f in files if records_key(f, entry)), files[0])
            raise HostError(
                f"the host key of {entry} has CHANGED: the server offers {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, but {recorded} records {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)}. This may be another server answering at that address, or the "
                "server was reinstalled. Refusing to connect (--accept-new-host-keys never replaces a key); "
                f"nothing was run there. If the change is expected, remove the old key (ssh-keygen -R '{entry}' "
                f"-f {recorded}) and record the new one after checking it"
            ) from None
        except paramiko.AuthenticationException as exc:
            if "timeout" in str(exc).lower():
                raise HostError(f"no answer from {target} within {self.bounds.connect} s (bounds.connect): SSH "
                                "did not finish the login") from None
            raise HostError(f"SSH login to {self.conn.user}@{target} was refused ({exc})") from None
        except paramiko.SSHException as exc:
            # a paused or frozen server: the kernel accepts the connection, sshd never speaks;
            # paramiko says so in several ways ("Error reading SSH protocol banner", "No existing
            # session" once its transport gave up), but always after the bound
            if "banner" in str(exc).lower() or time.monotonic() - started >= self.bounds.connect - 0.5:
                raise HostError(f"no answer from {target} within {self.bounds.connect} s (bounds.connect): the "
                                "connection was accepted, but SSH did not answer") from None
            raise HostError(f"SSH to {target} failed: {exc}") from None
        except TimeoutError:
            raise HostError(f"no answer from {target} within {self.bounds.connect} s (bounds.connect)") from None
        except socket.gaierror as exc:   # the name does not resolve (DNS, /etc/hosts)
            raise HostError(f"cannot connect to {target}: {exc.strerror} (if {self.conn.host} is a Host of an "
                            "ssh_config, give that file with -S FILE, or add the host to ~/.ssh/config)") from None
        except OSError as exc:   # includes paramiko's NoValidConnectionsError
            reason = exc.strerror if getattr(exc, "strerror", None) else str(exc)
            raise HostError(f"cannot connect to {target}: {reason}") from None
        self.reached = True
        self._watch()

    def _watch(self) -> None:
        """An SSH keepalive that notices a host that stopped answering (frozen, paused, cut off).

        TCP alone does not: the kernel of a frozen server still acknowledges. When nothing
        has come from the server for `bounds.keepalive` seconds, a keepalive that wants a
        reply is sent (OpenSSH's ServerAliveInterval); when nothing comes for three of
        those, the connection is closed, and the command under way ends with that reason.
        Nothing is sent while the server talks, so quick tasks send no keepalive at all.
        One thread checks every connection of the run (tasks.connections.WATCHDOG).
        """
        transport = self.conn.client.get_transport()
        if transport is None:
            return
        packetizer = transport.packetizer
        read_message = packetizer.read_message

        def heard():
            message = read_message()
            self._last_heard = time.monotonic()
            return message

        packetizer.read_message = heard
        self._last_heard = time.monotonic()
        interval = self.bounds.keepalive
        WATCHDOG.watch(self, lambda: self._keepalive(transport, interval), min(1.0, interval / 2))

    def _keepalive(self, transport: paramiko.Transport, interval: int) -> bool:
        """One check of the watchdog; False: nothing more to watch on this connection."""
        if not transport.is_active():
            return False
        silent = time.monotonic() - self._last_heard
        if silent >= interval * KEEPALIVE_COUNT:
            self.silent = (f"the host stopped answering: nothing came back for {int(silent)} s "
                           f"(SSH keepalive every {interval} s, bounds.keepalive)")
            transport.close()
            return False
        # not while a key exchange is under way: sending would wait for its end, and hold up
        # the other connections' checks; the next check sends it
        if silent >= interval and transport.clear_to_send.is_set():
            message = paramiko.Message()
            message.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
            message.add_string("keepalive@openssh.com")
            message.add_boolean(True)     # want a reply: that is what shows the host is there
            try:
                transport._send_user_message(message)
            except (OSError, EOFError, paramiko.SSHException):
                return False
        return True

    def _check_host_keys(self, conn: Connection) -> None:
        """Give the connection what known_hosts records for its host (the global files read-only;
        each file read once per run) and set the policy for unknown keys."""
        files = known_hosts_files(conn.ssh_config)
        self.shared.copy_host_keys(
            [Path(p) for p in GLOBAL_KNOWN_HOSTS] + files, known_hosts_entry(conn.host, conn.port),
            conn.client.get_host_keys(),
            lambda path, exc: HostError(f"cannot read the known hosts file {path}: {exc}"))
        policy = (AcceptNewPolicy(files[0], self.shared.recorded) if self.accept_new_host_keys
                  else RefuseUnknownPolicy())
        conn.client.set_missing_host_key_policy(policy)

    def close(self) -> None:
        """Close the connection; a command held open by start_root gets EOF on its stdin first,
        so that it ends (and what it holds on the host is released) with the connection."""
        held, self._held = self._held, None
        if held is not None:
            promise, waiter = held
            try:
                promise.runner.channel.shutdown_write()
            except (OSError, EOFError, AttributeError, paramiko.SSHException):
                pass
        WATCHDOG.forget(self)
        self.conn.close()
        if held is not None:
            waiter.join(timeout=5)

    @property
    def is_root(self) -> bool:
        return self.conn.user == "root"

    def run_root(self, script: str, summary: str, timeout: int | None = None, check: bool = True,
                 bound: str = "", progress: Callable[[str], None] | None = None,
                 wrap: Callable[[str], str] | None = None, wait: int = 0):
        """Run a script as root in one shell (sudo covers all of it), within `timeout` seconds.

        With a sudo password (sudo.password, --prompt-for-sudo-password) Fabric answers
        sudo's prompt on the command's stdin: the password is never on a command line
        and never echoed (no terminal is allocated).

        The bound holds on the server (coreutils' `timeout` stops the script and everything
        it started, then KILLs what is left) and here (a little later, for a host that no
        longer answers). `bound` names the setting, for the message. `progress(text)` gets
        each PROGRESS line of the script's stdout as it comes. `wrap(command)`: a script
        around the bounded command (tasks/lock.py takes a lock there), which may wait up to
        `wait` seconds of its own before it runs the command.
        """
        seconds = int(timeout or self.bounds.quick)
        options = dict(hide=True, warn=True, in_stream=False, timeout=local_bound(seconds + wait))
        if progress is not None:
            options["out_stream"] = ProgressStream(progress)
        if wrap is None and self.wrap_each is not None:
            wrap = functools.partial(self.wrap_each, summary=summary)
        command = self._command(script, seconds, wrap)
        return self._checked(lambda: self._start(command, options), summary, seconds, bound, check)

    def start_root(self, script: str, summary: str, timeout: int, ready: str, wrap: Callable[[str], str],
                   bound: str = "", wait: int = 0, progress: Callable[[str], None] | None = None) -> str:
        """Like run_root, but `wrap`'s command prints the line `ready` once the script is done and
        then keeps running until its stdin closes: when close() is called, or when the
        connection ends for any reason (tasks/lock.py holds a lock so). Returns the stdout
        printed before `ready`. A command that ends before `ready` is reported as run_root
        reports it."""
        seconds = int(timeout)
        stream = ReadyStream(ready, progress)
        options = dict(hide=True, warn=True, in_stream=False, out_stream=stream, asynchronous=True)
        promise = self._start(self._command(script, seconds, wrap), options)
        outcome: dict = {}

        def join() -> None:
            try:
                outcome["result"] = promise.join()
            except BaseException as exc:  # noqa: BLE001 - handed to _checked below
                outcome["error"] = exc
            stream.ended.set()

        waiter = threading.Thread(target=join, name=f"held-{self.label}", daemon=True)
        waiter.start()
        limit = local_bound(seconds + wait)
        if not stream.ended.wait(limit):
            self._held = (promise, waiter)
            raise HostError(f"{summary}: {self.silent or f'no answer from the host within {limit} s'}")
        if stream.ready.is_set():
            self._held = (promise, waiter)
            return stream.before

        def finished():
            if "error" in outcome:
                raise outcome["error"]
            return outcome["result"]

        self._checked(finished, summary, seconds, bound, check=True)
        raise HostError(f"{summary}: the command ended before it was done")   # exit 0 without `ready`

    def _command(self, script: str, seconds: int, wrap: Callable[[str], str] | None) -> str:
        """The command for the SSH channel. As root: the bounded script (in `wrap`'s script).
        Through sudo: the same program, written into a private file of the login user's that
        root runs with `sh FILE`. sudo logs its whole command line, a journal line per KB: a
        status's 25 KB made some thirty lines on every host at every run; now one, `sh FILE`."""
        timed = cmd("timeout", "-k", KILL_AFTER, seconds) + " " + sh_c(script)
        program = sh_c(wrap(timed)) if wrap else timed
        if self.is_root:
            return program
        path = RUN_FILE_PREFIX + secrets.token_hex(16)
        # -n: fail at once rather than wait for a password nobody will type
        sudo = cmd("sudo", "-S", "-p", self.sudo_prompt, "-H") if self.sudo_password else "sudo -n -H"
        return through_private_file(program, path, f"{sudo} sh {shlex.quote(path)}")

    @property
    def sudo_prompt(self) -> str:
        return self.conn.config.sudo.prompt

    def _start(self, command: str, options: dict):
        if self.sudo_password and not self.is_root:
            # as Fabric's sudo() does, with sudo inside the command rather than before it: the
            # password answers sudo's prompt on stdin; a refused one is a Failure (ResponseNotAccepted)
            answer = FailingResponder(pattern=re.escape(self.sudo_prompt), response=f"{self.sudo_password}\n",
                                      sentinel="Sorry, try again.\n")
            options = {**options, "watchers": [*options.get("watchers", ()), answer]}
        return self.conn.run(command, **options)

    @property
    def connection_lost(self) -> bool:
        """The SSH connection is gone (a typed fact: paramiko's transport is no longer active)."""
        transport = self.conn.client.get_transport() if self.conn.client else None
        return transport is None or not transport.is_active()

    def _lost(self, summary: str) -> ConnectionLost:
        return ConnectionLost(summary, self.silent or LOST)

    def _checked(self, call: Callable, summary: str, seconds: int, bound: str, check: bool):
        """call()'s Result, or the HostError that says what went wrong, in one line."""
        try:
            result = call()
        except AuthFailure:
            raise HostError(
                f"{summary}: sudo on this host refused the password given for {self.conn.user} "
                "(sudo.password or --prompt-for-sudo-password); nothing was run"
            ) from None
        except CommandTimedOut:
            if self.silent:
                raise self._lost(summary) from None
            raise HostError(f"{summary}: no answer from the host within {local_bound(seconds)} s") from None
        except (UnexpectedExit, Failure) as exc:
            if isinstance(exc, Failure) and isinstance(exc.reason, ResponseNotAccepted):
                raise HostError(f"{summary}: sudo on this host refused the password given for {self.conn.user} "
                                "(sudo.password or --prompt-for-sudo-password); nothing was run") from None
            raise RemoteCommandError(summary, self.mask(str(exc))) from None
        except (OSError, paramiko.SSHException, EOFError, ThreadException) as exc:
            if self.silent or self.connection_lost:
                raise self._lost(summary) from None
            raise HostError(f"{summary}: the connection failed ({exc})") from None
        if self.silent:
            raise self._lost(summary)
        if result.exited == -1 and self.connection_lost:
            # the channel closed without an exit status because the connection ended
            raise self._lost(summary)
        if timed_out(result.exited):
            raise HostError(f"{summary}: did not finish within {seconds} s{f' ({bound})' if bound else ''}; "
                            "it was stopped on the host")
        if check and result.exited != 0:
            output = (result.stderr.strip() or result.stdout.strip())
            if "a password is required" in output or "a terminal is required" in output:
                raise HostError(
                    f"{summary}: sudo on this host needs a password: run again with --prompt-for-sudo-password "
                    f"(or set Fabric's sudo.password), or give {self.conn.user} passwordless sudo; nothing was run"
                )
            raise command_error(summary, result.stdout, result.stderr, result.exited, self.mask)
        return result

    def upload_private(self, uploads: tuple[Upload, ...]) -> str:
        """Copy file contents into a fresh directory only the login user can read; returns its path.

        SFTP, not the command line: contents may hold a password. The install script
        removes the directory; one left by a deploy that was cut off (the connection
        dropped mid-upload) is found by a later deploy's probe and removed then.
        """
        try:
            tmpdir = self.conn.run(cmd("mktemp", "-d", UPLOAD_PREFIX + "XXXXXXXXXX"), hide=True,
                                   in_stream=False, timeout=local_bound(self.bounds.quick)).stdout.strip()
            sftp = self.conn.sftp()
            sftp.get_channel().settimeout(self.bounds.quick)   # each write; the keepalive watches too
            for index, upload in enumerate(uploads):
                with sftp.open(f"{tmpdir}/{index}", "w") as remote_file:
                    remote_file.chmod(0o600)
                    remote_file.write(upload.content.encode())
        except (UnexpectedExit, Failure) as exc:
            raise HostError(f"cannot make a private upload directory: {self.mask(str(exc))}") from None
        except CommandTimedOut:
            raise HostError(self.silent or f"no answer from the host within {local_bound(self.bounds.quick)} s "
                            "(making the upload directory); nothing was installed") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise HostError(f"the upload failed ({self.silent or exc}); nothing was installed") from None
        return tmpdir

    def mask(self, text: str) -> str:
        return mask_lines(mask_secrets(text, (*self.secrets, self.sudo_password or "")))
