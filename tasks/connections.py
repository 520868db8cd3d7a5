"""What the connections of one run share: made once per run, not once per host.

A run of `fab` opens one connection per host, a hundred at once if asked. Per host it
needs only the host's own ssh_config settings and known_hosts keys and its transport's
thread; the rest is made once and shared (tasks.remote.Remote uses it):

- `shared_ssh(config)`: one per Fabric Config object (the run's `c.config`). Its copy of
  the configuration is made once (Fabric's `Config.clone()`, which a Connection would
  otherwise want per host, deep-copies all of it and also parses the ssh_config file
  again into the original, so that each clone is bigger than the last); its ssh_config
  rules are the ones Fabric parsed at start-up, each host looked up once
  (`RunSSHConfig`); each known_hosts file is read once (`copy_host_keys`).
- `WATCHDOG`: one thread that runs every connection's keepalive check (tasks.remote).

Connections must not write into the shared configuration (a write makes Invoke merge the
whole configuration again, under the feet of hosts reading it): tasks.remote gives each
Connection its own connect_kwargs.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from fabric import Config
from paramiko.hostkeys import HostKeys, InvalidHostKey

_MADE = threading.Lock()   # two hosts asking for the run's shared_ssh at once get the same one


class RunSSHConfig(paramiko.SSHConfig):
    """paramiko's ssh_config matching (Host, Match, tokens: its own code decides), for rules
    parsed already, with each host's result kept for the run.

    paramiko asks the password database for the local user name (`getpass.getuser()`; a
    passwd lookup when neither LOGNAME nor USER is set, as under cron or systemd) once for
    every Host block it does not match, at every lookup, and again for every value it
    expands. Here it is asked only where the answer can matter: for a `Match` block and
    for a value with a `%` token. The results are the same: a block without Match
    criteria matches nothing by them, and a value with neither `%` nor `~` has nothing to
    expand (`~` alone is the home directory).
    """

    def __init__(self, rules: list[dict]):
        super().__init__()
        self._config = rules          # read only here: lookups copy what they take
        self._found: dict[str, paramiko.SSHConfigDict] = {}
        self._lock = threading.Lock()
        self.lookups = 0              # hosts looked up (not answered from what was kept)

    def lookup(self, hostname: str) -> paramiko.SSHConfigDict:
        with self._lock:
            found = self._found.get(hostname)
            if found is None:
                # under the lock: a Match exec runs once per host, as it would for one connection
                found = self._found[hostname] = super().lookup(hostname)
                self.lookups += 1
        return copy.deepcopy(found)   # each connection its own (Fabric reads it, a caller may change it)

    def _does_match(self, match_list, target_hostname, canonical, final, options):
        if not match_list:
            return []        # what paramiko returns for a block without Match criteria, after a getuser()
        return super()._does_match(match_list, target_hostname, canonical, final, options)

    def _tokenize(self, config, target_hostname, key, value):
        if "%" not in value:
            if "~" in value and "~" in self._allowed_tokens(key):
                return value.replace("~", os.path.expanduser("~"))
            return value
        return super()._tokenize(config, target_hostname, key, value)


class SharedSSH:
    """One run's configuration for its connections, its ssh_config and its known_hosts files."""

    def __init__(self, config: Config):
        self.config = config.clone()
        self.ssh_config = RunSSHConfig(self.config.base_ssh_config._config)
        self.config._set(base_ssh_config=self.ssh_config)   # what every Connection looks its host up in
        self._known: dict[Path, HostKeys | Exception] = {}
        self._lock = threading.Lock()
        self.known_hosts_reads = 0

    def copy_host_keys(self, paths: list[Path], name: str, keys: HostKeys,
                       error: Callable[[Path, Exception], Exception]) -> None:
        """Into `keys` (a connection's), what `paths` record for `name` (`host` or `[host]:port`),
        as if the files were loaded into it one after the other: for each key type, the
        first key of the files, in the files' order. A file that cannot be read raises
        error(path, exc), for every host that needs it."""
        with self._lock:
            seen: set[str] = set()
            for path in paths:
                loaded = self._load(path)
                if isinstance(loaded, Exception):
                    raise error(path, loaded)
                for keytype, key in _first_of_each_type(loaded.lookup(name)):
                    if keytype not in seen:
                        keys.add(name, keytype, key)
                        seen.add(keytype)

    def _load(self, path: Path) -> HostKeys | Exception:
        loaded = self._known.get(path)
        if loaded is None:
            loaded = HostKeys()
            try:
                if path.is_file():
                    loaded.load(str(path))
                    self.known_hosts_reads += 1
            except (OSError, UnicodeDecodeError, InvalidHostKey) as exc:
                loaded = exc
            self._known[path] = loaded
        return loaded

    def recorded(self, path: Path, name: str, key: paramiko.PKey) -> None:
        """A key just appended to `path` (--accept-new-host-keys): later connections of the run
        find it there, as they would reading the file again."""
        with self._lock:
            loaded = self._known.get(path)
            if isinstance(loaded, HostKeys):
                loaded.add(name, key.get_name(), key)


def _first_of_each_type(found) -> list[tuple[str, paramiko.PKey]]:
    """A HostKeys.lookup() answer as (key type, key) in the order paramiko reads it: its first
    entry's type first (the type it asks the server for), then the others."""
    pairs: dict[str, paramiko.PKey] = {}
    for keytype in found.keys() if found is not None else ():
        pairs.setdefault(keytype, found[keytype])   # found[type]: the first key of that type
    return list(pairs.items())


def shared_ssh(config: Config) -> SharedSSH:
    """The run's SharedSSH: one per Config object (a run's `c.config`), made on first use."""
    with _MADE:
        shared = getattr(config, "_fabcelery_shared_ssh", None)
        if shared is None:
            shared = SharedSSH(config)
            config._set(_fabcelery_shared_ssh=shared)
        return shared


class Watchdog:
    """One thread for the keepalive checks of every open connection (tasks.remote).

    check() of each watched connection runs every `tick` seconds (the smallest asked
    for); a check that returns False, or raises, is not run again. The thread ends when
    nothing is watched, and starts again with the next connection.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._checks: dict[object, tuple[Callable[[], bool], float]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, owner: object, check: Callable[[], bool], tick: float) -> None:
        with self._lock:
            self._checks[owner] = (check, tick)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fabcelery-keepalive", daemon=True)
                self._thread.start()

    def forget(self, owner: object) -> None:
        with self._lock:
            self._checks.pop(owner, None)

    @property
    def watching(self) -> int:
        with self._lock:
            return len(self._checks)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._checks:
                    self._thread = None
                    return
                tick = min(t for _, t in self._checks.values())
            time.sleep(tick)
            with self._lock:
                checks = list(self._checks.items())
            for owner, (check, _) in checks:
                try:
                    keep = check()
                except Exception:   # noqa: BLE001 - one connection's trouble must not end the others' checks
                    keep = False
                if not keep:
                    with self._lock:
                        if self._checks.get(owner, (None,))[0] is check:
                            del self._checks[owner]


WATCHDOG = Watchdog()
