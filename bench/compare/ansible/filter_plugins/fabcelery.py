"""The Jinja filters fabcelery's templates use (tasks/configs.py registers them for fab)."""

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]   # bench/compare/ansible/filter_plugins -> the repository
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tasks.redis_broker import redis_quote  # noqa: E402 - fabcelery's own quoting for redis.conf


def pyrepr(value):
    """A Python literal, as fab's `pyrepr` (repr); str() drops Ansible's tagging first."""
    return repr(str(value)) if isinstance(value, str) else repr(value)


class FilterModule:
    def filters(self):
        return {"pyrepr": pyrepr, "redis_quote": lambda value: redis_quote(str(value)),
                "shquote": lambda value: shlex.quote(str(value))}
