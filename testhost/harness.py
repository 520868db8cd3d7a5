"""Start, reach and remove fabcelery's test hosts.

A test host is a podman container from ``localhost/fabcelery-testhost:SUITE`` (built by
``testhost/setup.sh``) that boots systemd as PID 1 and runs sshd, published on a
loopback port. A :class:`Fleet` owns the hosts of one run and keeps, in its state
directory, an SSH key made for the run, a known_hosts file of the hosts' real host keys
and an ssh_config with one alias per host, so that ``ssh -F STATE_DIR/ssh_config NAME``
(and Fabric pointed at the same files) connects with strict host-key checking::

    with Fleet(tmp_path) as fleet:
        broker = fleet.start("deb12", suite="bookworm")
        fleet.ssh(broker, "sudo -n true")
        fleet.exec(broker, "systemctl is-active ssh")   # podman exec, no SSH

Every host gets a fixed address on podman's default bridge (``internal_ip``), which
the other hosts of the fleet reach and which survives a restart, as a server's would.
Nothing here sends traffic anywhere but to loopback and to the fleet's containers.

Every host's apt and pip go through the machine's package caches, which setup.sh
starts (apt-cacher-ng on APT_CACHE_PORT, a caching PyPI proxy on PIP_CACHE_PORT) and
which the hosts reach at the bridge's gateway: the harness writes that into the host's
own configuration (an apt.conf.d file and /etc/xdg/pip/pip.conf) when it starts it,
as a server's administrator would point it at a local mirror. The deploy knows nothing
of it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import shlex
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

log = logging.getLogger(__name__)

SUITES = ("bookworm", "trixie")
SETUP_SCRIPT = Path(__file__).with_name("setup.sh")
NETWORK = "podman"  # podman's default bridge

# Labels on every container: the run it belongs to, and (for runs that end with their
# process, such as a pytest session) which process owns it, so that cleanup_stale()
# can tell a crashed run's leftovers from a run still going on.
RUN_LABEL = "fabcelery.run"
HOST_LABEL = "fabcelery.host"
SUITE_LABEL = "fabcelery.suite"
OWNER_LABEL = "fabcelery.owner"

PODMAN_TIMEOUT = 120.0  # one podman call: run, restart, cp, ...
SYSTEMD_READY_TIMEOUT = 90.0
SSH_READY_TIMEOUT = 60.0
COMMAND_TIMEOUT = 600.0  # default for exec() and ssh(): long enough for apt and pip
STOP_SECONDS = 10  # how long podman lets systemd shut down before it kills it
SETUP_TIMEOUT = 1800.0

# The package caches that setup.sh starts on this machine (the same ports are there).
APT_CACHE_PORT = 3143
PIP_CACHE_PORT = 3144
APT_PROXY_CONF = "/etc/apt/apt.conf.d/00fabcelery-testhost-cache"
PIP_CONF = "/etc/xdg/pip/pip.conf"  # read by every pip beside the image's /etc/pip.conf (its CA)

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_IP_TAKEN = "already allocated"  # podman's IPAM error when an address is in use
# podman finds a free loopback port for SSH, then binds it: in between, an outgoing connection
# on loopback (the run's own SSH clients, which come and go by the hundred) may take it as its
# source port. Seen in a make test: "cannot listen on the TCP port: ... address already in use"
_PORT_TAKEN = "address already in use"
_FREEZE_FAILED = "unable to freeze"  # runc's error when the cgroup v1 freezer did not settle
PAUSE_ATTEMPTS = 5


def image_name(suite: str) -> str:
    return f"localhost/fabcelery-testhost:{suite}"


class HarnessError(RuntimeError):
    """A test host could not be started, reached or controlled."""


class CommandFailed(subprocess.CalledProcessError):
    """A command exited non-zero; unlike its base class, str() shows the output."""

    def __str__(self) -> str:
        lines = [f"`{shlex.join(self.cmd)}` exited with status {self.returncode}"]
        for stream, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text and text.strip():
                lines.append(f"--- {stream} ---\n{text[-3000:].rstrip()}")
        return "\n".join(lines)


@dataclass
class TestHost:
    """One test server of a fleet."""

    __test__ = False  # a class named Test* is no test class for pytest

    name: str  # SSH alias in the fleet's ssh_config, and the container's hostname
    suite: str  # bookworm | trixie
    container: str  # podman container name: fabcelery-RUN_ID-NAME
    port: int  # loopback port published to the container's port 22
    internal_ip: str  # address on podman's bridge, where the other hosts reach it


class Fleet:
    """The test hosts of one run, and the SSH files to reach them.

    ``state_dir`` receives ``id_ed25519`` (+ ``.pub``), ``known_hosts`` and
    ``ssh_config``; an existing key there is reused. Containers are named
    ``fabcelery-RUN_ID-NAME`` and labelled with the run id. ``persistent=True`` (for
    ``make demo``) leaves the containers out of :func:`cleanup_stale` once this
    process ends; ``package_caches=False`` leaves the hosts' apt and pip as the image
    has them (straight to the package registries), e.g. to measure what the caches
    save. Methods may be called from several threads, e.g. to start hosts concurrently.
    Used as a context manager, the fleet removes all its hosts on exit.
    """

    def __init__(
        self,
        state_dir: Path | str,
        run_id: str | None = None,
        *,
        persistent: bool = False,
        package_caches: bool = True,
    ) -> None:
        self.run_id = run_id or secrets.token_hex(4)
        if not _NAME_PATTERN.fullmatch(self.run_id):
            raise ValueError(f"run id {self.run_id!r} must match {_NAME_PATTERN.pattern}")
        self.persistent = persistent
        self.package_caches = package_caches
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.key_path = self.state_dir / "id_ed25519"
        self.public_key_path = self.state_dir / "id_ed25519.pub"
        self.known_hosts_path = self.state_dir / "known_hosts"
        self.ssh_config_path = self.state_dir / "ssh_config"
        self.hosts: dict[str, TestHost] = {}
        self._lock = threading.Lock()  # guards hosts and the files in state_dir
        self._starting: set[str] = set()
        self._subnet: ipaddress.IPv4Network | None = None
        self._gateway: str | None = None  # where the hosts reach this machine (its caches)
        self._ensure_key()
        self.known_hosts_path.touch()
        if not self.ssh_config_path.exists():
            self._write_ssh_config()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove_all()

    def container_name(self, name: str) -> str:
        return f"fabcelery-{self.run_id}-{name}"

    # --- starting and adopting hosts --------------------------------------------------

    def start(self, name: str, suite: str = "trixie", *, image: str | None = None) -> TestHost:
        """Start a fresh host and return once SSH and systemd are ready on it.

        ``image``: another image than the bare test host of ``suite`` to boot, e.g. a
        snapshot of a deployed host (:meth:`snapshot`), made from that suite's image."""
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"host name {name!r} must match {_NAME_PATTERN.pattern}")
        if suite not in SUITES:
            raise ValueError(f"suite {suite!r} is not one of {', '.join(SUITES)}")
        image = image or image_name(suite)
        if _podman("image", "exists", image, check=False).returncode != 0:
            raise HarnessError(f"image {image} is missing: run testhost/setup.sh {suite}")
        with self._lock:
            if name in self.hosts or name in self._starting:
                raise ValueError(f"the fleet already has a host named {name!r}")
            self._starting.add(name)
        started = time.monotonic()
        container = self.container_name(name)
        try:
            internal_ip = self._run_container(name, suite, container, image)
            port = _published_ssh_port(container)
            host = TestHost(name, suite, container, port, internal_ip)
            self._prepare_host(host)
            state = _wait_for_systemd(container)
            if state != "running":
                raise HarnessError(
                    f"{name}: systemd is {state!r} on a fresh host; failed units:\n" + _failed_units(container)
                )
            host_keys = _wait_for_sshd(port)
        except BaseException as error:
            details = _container_log_tail(container)
            _remove_containers([container])
            with self._lock:
                self._starting.discard(name)
            if isinstance(error, Exception) and details:
                raise HarnessError(f"{name} did not start: {error}\n{details}") from error
            raise
        with self._lock:
            self._starting.discard(name)
            self.hosts[name] = host
            self._record_host_keys(port, host_keys)
            self._write_ssh_config()
        log.info("%s (%s) ready in %.1f s on port %d", name, suite, time.monotonic() - started, port)
        return host

    def adopt(self, name: str) -> TestHost | None:
        """Take over this run's existing container for ``name``, e.g. one that an
        earlier ``python -m testhost up`` started; start it if it was stopped.
        Returns None when there is no such container."""
        container = self.container_name(name)
        info = _inspect_container(container)
        if info is None:
            return None
        if info["State"]["Status"] != "running":
            _podman("start", container)
        _wait_for_systemd(container)
        port = _published_ssh_port(container)
        suite = info["Config"]["Labels"].get(SUITE_LABEL, "")
        host = TestHost(name, suite, container, port, _internal_ip(container))
        self._prepare_host(host)  # the state dir may have a new key
        host_keys = _wait_for_sshd(port)
        with self._lock:
            self.hosts[name] = host
            self._record_host_keys(port, host_keys)
            self._write_ssh_config()
        return host

    def _run_container(self, name: str, suite: str, container: str, image: str) -> str:
        """`podman run` the host with a fixed bridge address; return that address.

        A fixed address (rather than podman's next free one) stays the same across
        `podman restart`, so configs that name it keep working after a reboot."""
        labels = {RUN_LABEL: self.run_id, HOST_LABEL: name, SUITE_LABEL: suite}
        if not self.persistent:
            labels[OWNER_LABEL] = _process_identity(os.getpid())
        for _attempt in range(5):
            internal_ip = self._pick_internal_ip()
            args = ["run", "--detach", "--name", container, "--hostname", name]
            for key, value in labels.items():
                args += ["--label", f"{key}={value}"]
            args += [
                "--systemd=always",
                f"--stop-timeout={STOP_SECONDS}",
                f"--network={NETWORK}",
                f"--ip={internal_ip}",
                # Podman picks a free loopback port itself: no race with other runs.
                "--publish=127.0.0.1::22",
                image,
                "/sbin/init",
            ]
            result = _podman(*args, check=False)
            if result.returncode == 0:
                return internal_ip
            # A failed run can leave a created container behind.
            _remove_containers([container])
            if _IP_TAKEN not in result.stderr and _PORT_TAKEN not in result.stderr:
                raise CommandFailed(result.returncode, ["podman", *args], result.stdout, result.stderr)
            log.debug("%s or its SSH port is taken, trying another", internal_ip)
        raise HarnessError(f"{name}: no free address or SSH port found on network {NETWORK}")

    def _pick_internal_ip(self) -> str:
        """A random address in the upper half of the bridge's subnet, away from the
        low addresses that podman hands out in order."""
        subnet, _gateway = self._network()
        size = subnet.num_addresses
        offset = random.randrange(size // 2, size - 1)  # never the broadcast address
        return str(subnet.network_address + offset)

    def _network(self) -> tuple[ipaddress.IPv4Network, str]:
        """The bridge's IPv4 subnet, and its gateway: this machine, as the hosts see it."""
        if self._subnet is None or self._gateway is None:
            result = _podman("network", "inspect", NETWORK, "--format",
                             "{{range .Subnets}}{{.Subnet}},{{.Gateway}} {{end}}")
            pairs = [entry.split(",", 1) for entry in result.stdout.split()]
            ipv4 = [(ipaddress.ip_network(subnet), gateway) for subnet, gateway in pairs
                    if isinstance(ipaddress.ip_network(subnet), ipaddress.IPv4Network)]
            if not ipv4 or ipv4[0][0].num_addresses < 256:
                raise HarnessError(f"network {NETWORK} has no IPv4 subnet of /24 or larger")
            if not ipv4[0][1]:
                raise HarnessError(f"network {NETWORK} has no gateway for {ipv4[0][0]}")
            self._subnet, self._gateway = ipv4[0]
        return self._subnet, self._gateway

    def _prepare_host(self, host: TestHost) -> None:
        """Install the run's public key for `deploy`, and point the host's apt and pip at
        the machine's package caches (one podman exec)."""
        command = (
            "install -d -o deploy -g deploy -m 0700 /home/deploy/.ssh"
            " && cat >/home/deploy/.ssh/authorized_keys"
            " && chown deploy:deploy /home/deploy/.ssh/authorized_keys"
            " && chmod 0600 /home/deploy/.ssh/authorized_keys"
        )
        if self.package_caches:
            _require_package_caches()
            _subnet, gateway = self._network()
            apt_conf, pip_conf = package_cache_config(gateway)
            command += (
                f" && printf %s {shlex.quote(apt_conf)} >{APT_PROXY_CONF}"
                f" && install -d -m 0755 {os.path.dirname(PIP_CONF)}"
                f" && printf %s {shlex.quote(pip_conf)} >{PIP_CONF}"
            )
        self.exec(host, command, input=self.public_key_path.read_text(), timeout=PODMAN_TIMEOUT)

    # --- running commands ------------------------------------------------------------

    def exec(
        self,
        host: TestHost | str,
        command: str,
        user: str = "root",
        check: bool = True,
        input: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` with bash inside the container (podman exec, no SSH)."""
        container = self._host(host).container
        args = ["podman", "exec", "--user", user]
        if input is not None:
            args.append("--interactive")
        args += [container, "bash", "-c", command]
        return _run(args, check=check, input=input, timeout=timeout)

    def ssh(
        self,
        host: TestHost | str,
        command: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as ``deploy`` over SSH, with the OpenSSH client and the
        fleet's ssh_config (so host keys are checked strictly)."""
        name = self._host(host).name
        args = ["ssh", "-F", str(self.ssh_config_path), "--", name, command]
        return _run(args, check=check, input=input, timeout=timeout)

    def put_tree(
        self,
        host: TestHost | str,
        local_dir: Path | str,
        remote_dir: str,
        owner: str = "root:root",
    ) -> None:
        """Copy the contents of ``local_dir`` into ``remote_dir`` (created if
        missing), then ``chown -R owner remote_dir``."""
        local = Path(local_dir)
        if not local.is_dir():
            raise NotADirectoryError(str(local))
        target = self._host(host)
        self.exec(target, f"mkdir -p {shlex.quote(remote_dir)}", timeout=PODMAN_TIMEOUT)
        # "DIR/." copies the directory's contents, not the directory itself.
        _podman("cp", f"{local}/.", f"{target.container}:{remote_dir}")
        self.exec(
            target,
            f"chown -R {shlex.quote(owner)} {shlex.quote(remote_dir)}",
            timeout=PODMAN_TIMEOUT,
        )

    # --- restarting and removing ------------------------------------------------------

    def restart(self, host: TestHost | str) -> TestHost:
        """Reboot the host (podman restart) and wait for systemd and sshd again. Its
        host keys, port and internal address stay the same."""
        target = self._host(host)
        # stop + start rather than "podman restart": see _stop_container.
        _stop_container(target.container)
        _podman("start", target.container)
        state = _wait_for_systemd(target.container)
        if state != "running":
            log.warning("%s: systemd is %s after restart", target.name, state)
        _wait_for_sshd(target.port)
        target.internal_ip = _internal_ip(target.container)
        return target

    def running(self, host: TestHost | str) -> bool:
        """Whether the host's container is running (not stopped, not removed)."""
        info = _inspect_container(self._host(host).container)
        return info is not None and bool(info.get("State", {}).get("Running"))

    def pause(self, host: TestHost | str) -> None:
        """Freeze every process of the host (podman pause): it stops answering, and its
        connections stay open, as a hung server's do. A failure shows podman's stderr.

        With cgroup v1's freezer (these machines), runc gives up with "unable to freeze"
        (podman: exit 125) when the cgroup does not settle in time, e.g. while the host
        forks new processes (a worker restarting); runc thaws it again then, so the pause
        is tried again, a few times."""
        container = self._host(host).container
        for attempt in range(PAUSE_ATTEMPTS):
            result = _podman("pause", container, check=False)
            if result.returncode == 0:
                return
            if _FREEZE_FAILED not in result.stderr or attempt == PAUSE_ATTEMPTS - 1:
                raise CommandFailed(result.returncode, ["podman", "pause", container], result.stdout, result.stderr)
            log.info("%s: podman pause: unable to freeze, trying again", container)
            time.sleep(0.2)

    def unpause(self, host: TestHost | str, check: bool = True) -> None:
        """Thaw a paused host (podman unpause)."""
        _podman("unpause", self._host(host).container, check=check)

    def snapshot(self, host: TestHost | str, image: str, labels: dict[str, str] | None = None) -> str:
        """Shut the host down cleanly (as stop()) and save its disk as ``image`` (podman
        commit), with ``labels``; return the image's id. A host started from it later
        boots what this one had installed and enabled, with that run's key, host keys
        and package-cache settings replaced by its own fleet's (see start())."""
        target = self._host(host)
        _stop_container(target.container)
        args = ["commit", "--quiet", "--change", "CMD=/sbin/init"]
        for key, value in (labels or {}).items():
            args += ["--change", f"LABEL={key}={value}"]
        return _podman(*args, target.container, image, timeout=COMMAND_TIMEOUT).stdout.strip()

    def stop(self, host: TestHost | str) -> None:
        """Shut the host down (podman stop); restart() boots it again."""
        _stop_container(self._host(host).container)

    def remove(self, host: TestHost | str) -> None:
        """Remove the host's container and its entries in known_hosts and ssh_config."""
        target = self._host(host)
        _remove_containers([target.container], check=True)
        with self._lock:
            self.hosts.pop(target.name, None)
            self._record_host_keys(target.port, [])
            self._write_ssh_config()

    def remove_all(self) -> list[str]:
        """Remove every container of this run, including ones this object did not
        start. Never raises (it runs in teardown); returns the containers removed."""
        containers = {host.container for host in self.hosts.values()}
        try:
            containers |= set(_containers_with_label(f"{RUN_LABEL}={self.run_id}"))
        except Exception as error:  # noqa: BLE001 - teardown must go on
            warnings.warn(f"could not list this run's containers: {error}", stacklevel=2)
        removed = sorted(containers)
        try:
            _remove_containers(removed)
        except Exception as error:  # noqa: BLE001
            warnings.warn(f"could not remove {', '.join(removed)}: {error}", stacklevel=2)
        try:
            with self._lock:
                for host in self.hosts.values():
                    self._record_host_keys(host.port, [])
                self.hosts.clear()
                self._write_ssh_config()
        except Exception as error:  # noqa: BLE001
            warnings.warn(f"could not rewrite {self.state_dir}: {error}", stacklevel=2)
        return removed

    # --- the SSH files ----------------------------------------------------------------

    def _host(self, host: TestHost | str) -> TestHost:
        if isinstance(host, TestHost):
            return host
        try:
            return self.hosts[host]
        except KeyError:
            raise KeyError(f"the fleet has no host named {host!r}") from None

    def _ensure_key(self) -> None:
        if self.key_path.exists() and self.public_key_path.exists():
            return
        self.key_path.unlink(missing_ok=True)
        self.public_key_path.unlink(missing_ok=True)
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"fabcelery-testhost-{self.run_id}",
                "-f",
                str(self.key_path),
            ],
            timeout=30,
        )

    def _record_host_keys(self, port: int, host_keys: list[str]) -> None:
        """Replace known_hosts' entries for ``[127.0.0.1]:port`` with ``host_keys``
        (a port that an earlier host had may carry another host's keys)."""
        pattern = f"[127.0.0.1]:{port}"
        kept = [line for line in self.known_hosts_path.read_text().splitlines() if line.split(" ", 1)[0] != pattern]
        _write_atomically(self.known_hosts_path, "".join(f"{line}\n" for line in kept + host_keys))

    def _write_ssh_config(self) -> None:
        lines = [f"# Written by testhost.harness for run {self.run_id}: one block per test host."]
        for host in sorted(self.hosts.values(), key=lambda h: h.name):
            lines += [
                "",
                f"Host {host.name}",
                "    HostName 127.0.0.1",
                f"    Port {host.port}",
                "    User deploy",
                f"    IdentityFile {_ssh_config_path(self.key_path)}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {_ssh_config_path(self.known_hosts_path)}",
                "    StrictHostKeyChecking yes",
                "    BatchMode yes",
                "    ConnectTimeout 10",
            ]
        _write_atomically(self.ssh_config_path, "\n".join(lines) + "\n")


# --- package caches ---------------------------------------------------------------------


def package_cache_config(gateway: str) -> tuple[str, str]:
    """A host's apt.conf.d file and pip.conf that send its apt and pip through the
    machine's caches, which it reaches at ``gateway``."""
    apt_conf = (
        "// Written by testhost.harness: this test host's apt goes through the machine's cache.\n"
        f'Acquire::http::Proxy "http://{gateway}:{APT_CACHE_PORT}";\n'
    )
    pip_conf = (
        "# Written by testhost.harness: this test host's pip goes through the machine's cache.\n"
        "[global]\n"
        f"index-url = http://{gateway}:{PIP_CACHE_PORT}/index/\n"
        f"trusted-host = {gateway}:{PIP_CACHE_PORT}\n"
    )
    return apt_conf, pip_conf


_caches_seen = False


def _require_package_caches() -> None:
    """Fail clearly when the caches that the hosts' apt and pip are pointed at do not
    answer (setup.sh starts them; without them every apt and pip on a host fails)."""
    global _caches_seen
    if _caches_seen:
        return
    for what, port in (("apt", APT_CACHE_PORT), ("pip", PIP_CACHE_PORT)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError as error:
            raise HarnessError(
                f"the test hosts' {what} cache does not answer on 127.0.0.1:{port} ({error}):"
                f" run testhost/setup.sh, which starts it"
            ) from None
    _caches_seen = True


# --- images and stale containers ------------------------------------------------------


def images_ready(suites: Iterable[str] = SUITES) -> bool:
    """Whether podman, its configuration and the test-host images for ``suites``
    are in place and up to date (``setup.sh --check``; changes nothing)."""
    try:
        result = _run(["bash", str(SETUP_SCRIPT), "--check", *suites], check=False, timeout=120)
    except HarnessError:
        return False
    return result.returncode == 0


def ensure_images(suites: Iterable[str] = SUITES) -> None:
    """Install podman and build the images for ``suites`` where missing or out of
    date (runs setup.sh, whose progress lines go to stderr)."""
    try:
        subprocess.run(
            ["bash", str(SETUP_SCRIPT), *suites],
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=SETUP_TIMEOUT,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise HarnessError(f"testhost/setup.sh failed: {error}") from error


def cleanup_stale() -> list[str]:
    """Remove the test hosts of earlier runs whose process has ended without removing
    them (a crashed or killed pytest session). Persistent hosts (``make demo``) and
    hosts of runs still going on are left alone. Returns the containers removed."""
    stale = []
    for entry in _podman_json("ps", "--all", "--filter", f"label={RUN_LABEL}"):
        owner = (entry.get("Labels") or {}).get(OWNER_LABEL)
        if owner and not _process_alive(owner):
            stale.extend(entry.get("Names") or [])
    _remove_containers(stale)
    return stale


# --- images that runs make (snapshots): in use, and removed when no longer ------------------
#
# A run that boots hosts from an image it made (e.g. a snapshot of a deployed host) holds it
# (hold_image): a shared lock on a file named after the image, under IMAGE_USE_DIR, kept until
# the process ends, and the file's time is the image's last use. prune_images removes the
# other images of the repository, but never one that a live process holds, one that was used
# (or made) less than `unused_for` seconds ago (a second checkout on the same machine, at
# another commit, between two of its runs), or one that a container uses (podman refuses).

IMAGE_USE_DIR = Path("/run")
_held_images: dict[str, IO[str]] = {}


def _image_use_path(image: str) -> Path:
    return IMAGE_USE_DIR / ("fabcelery-image-" + re.sub(r"[^A-Za-z0-9_.-]", "_", image) + ".use")


def hold_image(image: str) -> None:
    """Mark ``image`` as used by this process until it ends (see above); waits while a
    prune_images in another process is deciding about it, so check that the image
    exists only after this."""
    if image in _held_images:
        return
    path = _image_use_path(image)
    held = open(path, "a")  # noqa: SIM115 - kept open (and locked) until the process ends
    fcntl.flock(held, fcntl.LOCK_SH)
    os.utime(path)
    _held_images[image] = held


def _last_use(path: Path, created: float) -> float:
    """When an image was last held (its use file's time), or made."""
    try:
        return max(path.stat().st_mtime, created)
    except FileNotFoundError:
        return created


def prune_images(repository: str, keep: Iterable[str], unused_for: float) -> list[str]:
    """Remove the images of ``repository`` other than ``keep`` that no process holds, that
    were not used for ``unused_for`` seconds and that no container uses (see above).
    Never raises: a podman error is logged. Returns the images removed."""
    keep = set(keep)
    removed: list[str] = []
    try:
        entries = _podman_json("images", repository)
    except Exception as error:  # noqa: BLE001 - pruning is housekeeping
        log.warning("could not list the images of %s: %s", repository, error)
        return removed
    now = time.time()
    images = {image: entry for entry in entries for image in entry.get("Names") or []}
    for image, entry in sorted(images.items()):
        if not image.startswith(repository + ":") or image in keep:
            continue
        path, created = _image_use_path(image), float(entry.get("Created") or 0)
        if now - _last_use(path, created) < unused_for:
            continue
        seen = path.stat().st_mtime if path.exists() else None
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process holds it
            if seen is not None and path.stat().st_mtime != seen:  # held (and let go) since we looked
                continue
            result = _podman("rmi", image, check=False, timeout=COMMAND_TIMEOUT)
            if result.returncode != 0:
                log.info("%s stays: %s", image, result.stderr.strip())
                if seen is None:
                    path.unlink(missing_ok=True)  # made only to lock: no use to record
                continue
            path.unlink(missing_ok=True)
            removed.append(image)
    if removed:
        log.info("removed unused images: %s", ", ".join(removed))
    return removed


# --- waiting for a host ---------------------------------------------------------------


def _wait_for_systemd(container: str) -> str:
    """Wait until systemd has finished booting; return its state (running, degraded).

    `is-system-running --wait` fails while systemd cannot be reached yet just after
    the container starts, so it is retried until the deadline."""
    deadline = time.monotonic() + SYSTEMD_READY_TIMEOUT
    last_answer = ""
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            result = _run(
                ["podman", "exec", container, "systemctl", "is-system-running", "--wait"],
                check=False,
                timeout=remaining,
            )
        except HarnessError:
            break
        state = result.stdout.strip()
        if state in ("running", "degraded"):
            return state
        last_answer = (state or result.stderr).strip()
        time.sleep(0.2)
    raise HarnessError(
        f"{container}: systemd did not finish booting within {SYSTEMD_READY_TIMEOUT:.0f} s"
        f" (last answer: {last_answer or 'none'})"
    )


def _wait_for_sshd(port: int) -> list[str]:
    """Wait until sshd answers on ``127.0.0.1:port``; return its host keys as
    known_hosts lines (every key type)."""
    deadline = time.monotonic() + SSH_READY_TIMEOUT
    last_error = ""
    while time.monotonic() < deadline:
        result = _run(
            ["ssh-keyscan", "-T", "2", "-t", "rsa,ecdsa,ed25519", "-p", str(port), "127.0.0.1"],
            check=False,
            timeout=15,
        )
        host_keys = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("#")]
        if host_keys:
            return host_keys
        last_error = result.stderr.strip() or last_error
        time.sleep(0.2)
    raise HarnessError(f"sshd did not answer on 127.0.0.1:{port} within {SSH_READY_TIMEOUT:.0f} s"
                       f" (ssh-keyscan said: {last_error[-500:] or 'nothing'})")


def _failed_units(container: str) -> str:
    result = _run(["podman", "exec", container, "systemctl", "--failed", "--no-pager"], check=False, timeout=30)
    return result.stdout + result.stderr


def _container_log_tail(container: str) -> str:
    """The container's last console lines (systemd's boot messages), for errors."""
    try:
        result = _podman("logs", "--tail=40", container, check=False, timeout=30)
    except HarnessError:
        return ""
    output = (result.stdout + result.stderr).strip()
    return f"--- podman logs --tail=40 {container} ---\n{output}" if output else ""


# --- podman -----------------------------------------------------------------------------


def _podman(*args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return _run(["podman", *args], check=check, timeout=timeout)


def _podman_json(*args: str) -> list[dict]:
    output = _podman(*args, "--format=json").stdout.strip()
    return json.loads(output) if output else []


def _stop_container(container: str) -> None:
    """podman stop, bounded by STOP_SECONDS. When systemd finishes its shutdown just
    as podman gives up and sends SIGKILL, podman reports "container state improper:
    stopped" and exits 125 although the container did stop; that is success here."""
    result = _podman("stop", f"--time={STOP_SECONDS}", container, check=False)
    if result.returncode == 0:
        return
    info = _inspect_container(container)
    if info is not None and not info.get("State", {}).get("Running", True):
        return
    raise CommandFailed(result.returncode, ["podman", "stop", f"--time={STOP_SECONDS}", container],
                        result.stdout, result.stderr)


def _inspect_container(container: str) -> dict | None:
    result = _podman("container", "inspect", container, check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)[0]


def _published_ssh_port(container: str) -> int:
    # "podman port" prints e.g. "127.0.0.1:41235".
    output = _podman("port", container, "22/tcp").stdout.strip()
    return int(output.splitlines()[0].rsplit(":", 1)[1])


def _internal_ip(container: str) -> str:
    return _podman("container", "inspect", container, "--format", "{{.NetworkSettings.IPAddress}}").stdout.strip()


def _containers_with_label(label: str) -> list[str]:
    entries = _podman_json("ps", "--all", "--filter", f"label={label}")
    return [name for entry in entries for name in entry.get("Names") or []]


def _remove_containers(containers: list[str], check: bool = False) -> None:
    if containers:
        _podman("rm", "--force", "--ignore", "--time=0", *containers, check=check)


# --- processes and files --------------------------------------------------------------


def _process_identity(pid: int) -> str:
    """``PID:START_TIME``: unlike the PID alone, not reused by a later process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces); start time is field 22.
    start_time = stat[stat.rindex(")") + 2 :].split()[19]
    return f"{pid}:{start_time}"


def _process_alive(identity: str) -> bool:
    pid, _, _ = identity.partition(":")
    try:
        return _process_identity(int(pid)) == identity
    except (OSError, ValueError, IndexError):
        return False


def _run(
    args: list[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its text output; bounded in time."""
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    try:
        result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout, **stdin)
    except subprocess.TimeoutExpired as error:
        raise HarnessError(f"timed out after {timeout:.0f} s: {shlex.join(args)}") from error
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, args, result.stdout, result.stderr)
    return result


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o600)
    temporary.replace(path)


def _ssh_config_path(path: Path) -> str:
    """A path as an ssh_config argument: quoted when it holds whitespace."""
    return f'"{path}"' if re.search(r"\s", str(path)) else str(path)
