"""The inventory's problems, worded: one Checker collects every problem of the file in one pass
(with its line, and a did-you-mean for an unknown key), and the task says them in one paragraph."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .inventory import ABS_PATH, ADDRESS, HOST_NAME, UNIX_NAME
from .refusals import HOST_LIMIT, PATH_MAX, USER_LIMIT, cut, directory_problem, is_root, normal_path

ROOT_WHY = {
    "user": "supervisord and the Celery programs run as this user, who owns their virtualenv, logs and pid files, "
            "so it must never be root; name an unprivileged user such as arches (the deploy creates it if missing)",
    "group": "this group may read the broker password and write the project's logs, so it must never be root; "
             "name another group, or leave 'project.group' out (it defaults to the user's name)",
}
# The longest value a server takes, and why (for the patterns that have one).
LIMITS = {UNIX_NAME: USER_LIMIT, HOST_NAME: HOST_LIMIT, ADDRESS: HOST_LIMIT}



class Checker:
    """Collects every problem in one pass, so the user fixes them all at once."""

    def __init__(self, path: Path, lines: dict[str, int] | None = None):
        self.path = path
        self.lines = lines or {}    # where each key is in the file (dotted, as the problems name them)
        self.problems: list[str] = []

    def problem(self, key: str, message: str, shown: str | None = None) -> None:
        """`shown`: the key as the message names it, when `key` itself is too long to show."""
        line = self.lines.get(key)
        where = f"line {line}: " if line else ""
        self.problems.append(f"{where}{shown or repr(key)} {message}")   # repr: a key with a newline stays on one line

    def section(self, data: dict, key: str, known: dict[str, str], required: tuple[str, ...] = ()) -> dict:
        value = data.get(key)
        if value is None:
            if required or key == "project":
                self.problem(key, "is missing")
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"must be a mapping, not {type_name(value)}")
            return {}
        self.unknown_keys(value, key, known)
        for name in required:
            if value.get(name) is None:
                self.problem(f"{key}.{name}", f"is missing ({known[name]})")
        return value

    def unknown_keys(self, value: dict, prefix: str, known: dict[str, str]) -> None:
        for name in value:
            if name not in known:
                close = closest(str(name), known)
                hint = f"; did you mean '{close}'?" if close else f" (known: {', '.join(known)})"
                self.problem(f"{prefix}.{name}" if prefix else str(name), f"is not a known key{hint}")

    def string(self, value: Any, key: str, pattern: re.Pattern, what: str, default: str | None = None,
               limit: tuple[int, str] | None = None) -> str | None:
        """`limit`: (the longest value a server takes, why), checked before the pattern."""
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.problem(key, f"must be a string ({what}), not {type_name(value)}")
            return default
        text = str(value)
        limit = limit or LIMITS.get(pattern)
        if limit and len(text.encode()) > limit[0]:
            self.problem(key, f"is {len(text.encode())} characters long ({cut(text)}); at most {limit[0]}: {limit[1]}")
            return default
        # fullmatch: `$` alone would let a trailing newline through into a config file
        if not pattern.fullmatch(text) or "/../" in text + "/" or text.endswith("/.."):
            self.problem(key, f"must be {what}; got {cut(text)}")
            return default
        return text

    def account(self, value: Any, key: str, what: str, default: str | None = None) -> str | None:
        """project.user or project.group: a Linux name, never root (by name or id 0)."""
        if value is not None and not isinstance(value, bool) and isinstance(value, (str, int)) and is_root(str(value)):
            which = "" if value == "root" else f" ({value!r} is root's id)"
            self.problem(key, f"is root{which}: " + ROOT_WHY[what])
            return default
        return self.string(value, key, UNIX_NAME, f"a {what} name like arches", default=default)

    def directory(self, value: Any, key: str, purpose: str) -> str | None:
        """project.path or project.virtualenv: an absolute path, spelt one way, that is
        neither a system directory nor inside one; `purpose`: what the deploy does with it."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(key, f"must be a string (an absolute path), not {type_name(value)}")
            return None
        if len(value.encode()) > PATH_MAX:
            self.problem(key, f"is {len(value.encode())} bytes long ({cut(value)}); a path has at most {PATH_MAX} "
                              "bytes (PATH_MAX, 4096 with its NUL)")
            return None
        if not ABS_PATH.fullmatch(value):
            self.problem(key, f"must be an absolute path; got {cut(value)}")
            return None
        refused = directory_problem(value, purpose)
        if refused:
            self.problem(key, refused)
            return None
        if ".." in value.split("/"):   # read lexically, '..' after a link would go elsewhere
            self.problem(key, f"must be an absolute path without '..'; got {cut(value)}")
            return None
        return normal_path(value)

    def integer(self, value: Any, key: str, low: int, high: int, default: int | None) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"must be a whole number from {low} to {high}, not {type_name(value)}")
            return default
        if not low <= value <= high:
            self.problem(key, f"must be from {low} to {high}; got {value}")
            return default
        return value


def paragraph(path: Path, problems: list[str]) -> str:
    return f"{path}: " + "; ".join(problems) + ". Fix the inventory and run again; nothing was changed."


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "true/false", type(None): "empty"}.get(
        type(value), f"a {type(value).__name__}"
    )


def closest(name: str, known: dict[str, str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return match[0] if match else None
