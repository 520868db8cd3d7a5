"""What the inventory refuses before anything connects (issue 24).

How the file is read: UTF-8 only, comments included, and no mapping key given twice
(PyYAML would raise a UnicodeDecodeError for the one and silently keep the last of the
other). And values that must never reach a server: root as the project's user or group,
a system directory as its path or virtualenv, names and paths longer than the servers
take. Pure: bytes and values in, problems out; tasks/inventory_load.py puts them into its one
paragraph.
"""

from __future__ import annotations

import posixpath
import re

import yaml

from .inventory import Project
from .layout import Layout, stage_path

# --- reading the file --------------------------------------------------------------------


class Unreadable(Exception):
    """The file cannot be read as an inventory; the message says where (not which file)."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(raw: bytes) -> tuple[object, dict[str, int]]:
    """The document in `raw`, and the line of every key, dotted as the problems name them
    (`hosts.prod.port`). Unreadable for bytes that are not UTF-8 and for a key given twice
    in one mapping; yaml.YAMLError for what is not YAML."""
    text = _utf8(raw)
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:   # a control character: the reader looks at them all first
        line = text.count("\n", 0, exc.position) + 1
        raise Unreadable(f"line {line} holds the character U+{exc.character:04X}, which YAML does not allow "
                         "in a file (a control character); remove it") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines, duplicates = loader.keys(node)
        if duplicates:
            raise Unreadable("; ".join(duplicates))
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    bad = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((number, exc.start + 1, line[exc.start]))
    where = _and([f"{n} ({byte:#04x} at column {column})" for n, column, byte in bad[:5]])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    which = f"lines {where}{more} hold bytes" if len(bad) > 1 else f"line {where} holds a byte"
    raise Unreadable(f"{which} that {'are' if len(bad) > 1 else 'is'} not UTF-8 (comments are read too, and "
                     "fabcelery reads the inventory as UTF-8 only); save the file as UTF-8")


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader, and a look at every mapping's keys before the document is built."""

    def keys(self, root: yaml.Node) -> tuple[dict[str, int], list[str]]:
        lines: dict[str, int] = {}
        duplicates: list[str] = []
        seen: set[int] = set()

        def walk(node: yaml.Node, prefix: str) -> None:
            if id(node) in seen:    # an alias: its keys were looked at where it was defined
                return
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                for item in node.value:
                    walk(item, prefix)
                return
            if not isinstance(node, yaml.MappingNode):
                return
            found: dict[object, tuple[str, list[int]]] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:   # `<<: *defaults`: the keys after it override, as YAML means
                    walk(value_node, prefix)
                    continue
                line = key_node.start_mark.line + 1
                key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                name = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(key_node, yaml.ScalarNode):
                    found.setdefault(key, (name, []))[1].append(line)
                lines.setdefault(name, line)
                walk(value_node, name)
            for name, at in found.values():
                if len(at) > 1:
                    times = "twice" if len(at) == 2 else f"{len(at)} times"
                    duplicates.append(f"{name!r} is given {times}, at lines {_and([str(n) for n in at])}: YAML would "
                                      "keep the last and silently drop the other settings; give it once")

        walk(root, "")
        return lines, duplicates


# --- root ---------------------------------------------------------------------------------


def is_root(text: str) -> bool:
    """root by name or by id (uid/gid 0, however many zeros)."""
    return text == "root" or (text.isdigit() and int(text) == 0)


# --- system directories -------------------------------------------------------------------

# Directories of the system itself: never a project's directory or virtualenv.
SYSTEM_DIRECTORIES = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/bin", "/usr/games", "/usr/include", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec",
    "/usr/libx32", "/usr/sbin", "/usr/share", "/usr/src",
    "/usr/local", "/usr/local/bin", "/usr/local/etc", "/usr/local/games", "/usr/local/include",
    "/usr/local/lib", "/usr/local/man", "/usr/local/sbin", "/usr/local/share", "/usr/local/src",
    "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock", "/var/log", "/var/mail", "/var/opt",
    "/var/run", "/var/spool", "/var/tmp", "/var/www",
})
# Trees that hold the system's own files (packages', the kernel's, the boot's): nothing of a
# project's inside them. /usr is one, except /usr/local (the local administrator's).
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                "/sys", "/usr", "/var/run", "/var/lock", "/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt",
                "/var/lib/systemd", "/var/lib/redis", "/var/lib/rabbitmq", "/root")
LOCAL = "/usr/local"
# Where fabcelery keeps files of its own (tasks/layout.py), which undeploy removes.
FABCELERY_TREES = ("/var/lib/fabcelery", "/var/lib/celery", "/var/log/celery", "/var/log/supervisor")
WHY = {"/root": "root's home, which the project user cannot enter",
       "/run": "emptied at every boot", "/var/run": "/run, emptied at every boot",
       "/var/lock": "/run/lock, emptied at every boot"}


def normal_path(text: str) -> str:
    """The path as the server reads it, spelt one way: /usr/./local/ and //usr/local are
    /usr/local, /opt/../usr is /usr (lexically: no link is followed here)."""
    return posixpath.normpath(re.sub(r"^/+", "/", text))


def directory_problem(text: str, purpose: str) -> str | None:
    """Why `text` cannot be a project's directory or virtualenv, or None. `purpose`: what the
    deploy would do with it, for the message."""
    normal = normal_path(text)
    shown = normal if normal == text else f"{normal} (as {text!r} reads)"
    if normal in SYSTEM_DIRECTORIES:
        return (f"is {shown}, a system directory itself: {purpose}; give a directory of the project's own, "
                "like /opt/arches/my_proj")
    for tree in SYSTEM_TREES:
        if _inside(normal, tree) and not (tree == "/usr" and _inside(normal, LOCAL)):
            why = f" ({WHY[tree]})" if tree in WHY else ""
            return (f"is {shown}, which lies inside {tree}{why}, a directory that holds the system's own files "
                    f"(/etc, /bin, /sbin, /lib*, /boot, /dev, /proc, /sys, /run, /root and /usr outside /usr/local): "
                    "keep the project's files out of them, e.g. under /opt or /srv")
    for tree in FABCELERY_TREES:
        if _inside(normal, tree):
            return (f"is {shown}, which lies inside {tree}, where fabcelery keeps files of its own that undeploy "
                    "removes; give a directory of the project's own, like /opt/arches/my_proj")
    return None


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree + "/")


# --- lengths ------------------------------------------------------------------------------
# The limits of the servers, measured in the Debian 12 and 13 test hosts (getconf; useradd
# and groupadd with names of 32 and 33 characters, a systemd unit with User= a 32-character
# user) and on their kernel (bind and connect of Unix sockets with paths of 107 and 108 bytes).

NAME_MAX = 255          # bytes in a file name (getconf NAME_MAX /)
PATH_MAX = 4095         # bytes in a path: 4096 with its NUL (getconf PATH_MAX /)
SUN_PATH_MAX = 107      # bytes in a Unix socket's path: sun_path holds 108 with its NUL
UNIX_NAME_MAX = 32      # a user or group name: useradd (Debian 12) and groupadd refuse 33
ERLANG_ATOM_MAX = 255   # a RabbitMQ node's name rabbit@NAME is an Erlang atom (and a directory)
# What pip puts below a virtualenv: the deepest file of fabcelery's own development
# virtualenv (supervisor, fabric, setuptools and the rest) is 121 bytes below it
# (lib/python3.11/site-packages/setuptools/...); the project's own packages go there too,
# so leave a generous 512.
VENV_ROOM = 512
# A file is staged beside its target under a name of its run (tasks/layout.py stage_path): RUN
# is the 10 random characters of the run's mktemp directory (nofollow.py: a pid, shorter).
STAGED_RUN = "X" * 10

USER_LIMIT = (UNIX_NAME_MAX, "Linux user and group names have at most 32 characters (useradd and groupadd refuse "
                             "longer ones)")
HOST_LIMIT = (253, "a host name or address has at most 253 characters")


def name_limit() -> tuple[int, str]:
    """The longest project.name: supervisord's socket, /run/NAME-supervisor/supervisor.sock,
    must fit a Unix socket's path."""
    socket = _layout("N").socket
    longest = SUN_PATH_MAX - (len(socket) - 1)
    return longest, (f"the deploy makes supervisord's socket {socket.replace('/N-', '/NAME-')} of it, and a Unix "
                     f"socket's path has at most {SUN_PATH_MAX} bytes (108 with its NUL)")


def path_problems(path: str, virtualenv: str, requirements: str | None, name: str) -> list[tuple[str, str]]:
    """(key, message) for paths the deploy would build longer than a server takes."""
    layout = _layout(name, path=path, virtualenv=virtualenv, requirements=requirements)
    problems = []
    staged = stage_path(layout.settings_local, STAGED_RUN)
    shown_settings = staged.replace(path, "PATH", 1)
    for key, value, built, shown, room in (
        ("project.path", path, staged, f"the deploy writes {shown_settings} (the settings file, staged beside it)", 0),
        ("project.virtualenv", virtualenv, virtualenv, f"pip puts files deep inside it (room kept: {VENV_ROOM} bytes)",
         VENV_ROOM),
        ("project.requirements", requirements, layout.requirements, "the deploy reads PATH/REQUIREMENTS", 0),
    ):
        if not value:
            continue
        part = max(value.split("/"), key=lambda p: len(p.encode()))
        if len(part.encode()) > NAME_MAX:
            problems.append((key, f"has a part of {len(part.encode())} bytes ({cut(part)}); a file or directory "
                                  f"name has at most {NAME_MAX} bytes (NAME_MAX)"))
        elif built and len(built.encode()) + room > PATH_MAX:
            longest = PATH_MAX - room - (len(built.encode()) - len(value.encode()))
            problems.append((key, f"is {len(value.encode())} bytes long, and {shown}: a path has at most {PATH_MAX} "
                                  f"bytes (PATH_MAX, 4096 with its NUL), so this one at most {longest} here"))
    return problems


def node_name_problem(host: str) -> str | None:
    """A RabbitMQ cluster node is rabbit@ and its inventory name up to the first dot."""
    node = "rabbit@" + host.split(".")[0]
    if len(node.encode()) <= ERLANG_ATOM_MAX:
        return None
    return (f"would be the RabbitMQ node rabbit@{host.split('.')[0][:40]}…, {len(node)} characters, and a node's name "
            f"has at most {ERLANG_ATOM_MAX} (an Erlang atom, and the name of its data directory); "
            f"its part before the first dot may have at most {ERLANG_ATOM_MAX - len('rabbit@')}")


def _layout(name: str, path: str = "/opt/p", virtualenv: str = "/opt/v", requirements: str | None = None):
    return Layout(Project(name=name, path=path, virtualenv=virtualenv, user="u", group="u",
                          requirements=requirements))


def cut(text: str, keep: int = 60) -> str:
    """A value as a message shows it: quoted, and no longer than a line."""
    return repr(text) if len(text) <= keep + 20 else f"{text[:keep]!r}… ({len(text)} characters)"



def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
