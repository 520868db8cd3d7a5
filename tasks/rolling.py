"""A rolling restart's arithmetic: --rolling (hosts at a time, or a share of them), --max-fail, and
the batches, in the hosts' order (tasks/day_two.py runs them).
"""

from __future__ import annotations


def rolling_size(value: object, hosts: int = 1) -> int | None:
    """`--rolling` (one host at a time), `--rolling N` (N at a time), `--rolling P%` (that share of
    the `hosts`, rounded down, at least one: Ansible's `serial: "P%"`), or no rolling (None)."""
    if value in (None, False, ""):
        return None
    if value is True:
        return 1
    text = str(value).strip()
    if text.endswith("%"):
        share = text[:-1].strip()
        if not share.isdigit() or not 1 <= int(share) <= 100:
            raise ValueError(f"--rolling takes a share of the hosts from 1% to 100%, not {text!r}")
        return max(1, hosts * int(share) // 100)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--rolling takes a number of hosts at a time (1 or more) or a share of them (10%), "
                         f"not {text!r}")
    return int(text)


def max_fail_share(value: object) -> int:
    """`--max-fail PERCENT` (0 to 100, with or without %): the share of the hosts that may fail before
    a rolling restart stops; 0 (the default): it stops at the first."""
    if value in (None, ""):
        return 0
    text = str(value).strip().removesuffix("%").strip()
    if not text.isdigit() or int(text) > 100:
        raise ValueError(f"--max-fail takes a percentage of the hosts from 0 to 100, not {str(value)!r}")
    return int(text)


def too_many_failed(failed: int, hosts: int, max_fail: int) -> bool:
    """More than `max_fail` percent of `hosts` failed (any failure at 0%)."""
    return failed * 100 > max_fail * hosts


def rolling_batches(names: list[str], size: int) -> list[list[str]]:
    """Hosts in the given order, `size` at a time."""
    return [names[i:i + size] for i in range(0, len(names), size)]

