"""A Redis that serves others is never broken silently.

The broker step turns Redis's passwordless `default` user off (`user default off` in
redis.conf): every project then authenticates with an account of its own. Whatever else
used that default user would get `NOAUTH Authentication required.` from then on. So where
Redis is installed and running and redis.conf does not turn the default user off yet, the
deploy's one probe also looks for signs of other users (tasks/scripts/redis_survey.sh):
keys outside fabcelery's projects' prefixes (`NAME:`) in any database (a sample of each),
clients connected as `default` other than the probe's own connection, a requirepass (or a
default user that asks for a password), and ACL users that fabcelery did not make. If it
finds any, the host is stopped before anything on it changes, with one paragraph saying
what it found and the choices. `broker.redis_default_user: off-anyway` accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import Inventory
from .probe import Facts, ProbeSpec, RedisSurvey
from .redis_broker import OLD_REDIS_FRAGMENT, REDIS_CONF, REDIS_DEFAULT_OFF
from .target import Target

FRAGMENTS = "/etc/redis/fabcelery-*.conf"   # tasks/broker.py redis_fragment(): one per project
SAMPLE = 1000                                # keys read from each database (SCAN)
SHOWN = 5                                    # client addresses named in the message
ACCEPT = "off-anyway"                        # broker.redis_default_user that accepts it


def survey_needs(target: Target) -> ProbeSpec:
    """The survey, as a part of the deploy's probe: on a Redis broker host whose inventory does
    not accept turning the default user off anyway."""
    if (not target.manages_broker or not target.broker.shared_default_user
            or target.inventory.broker.redis_default_user == ACCEPT):
        return ProbeSpec()
    return ProbeSpec(lines=((REDIS_CONF, REDIS_DEFAULT_OFF),),
                     redis_survey=RedisSurvey(REDIS_CONF, REDIS_DEFAULT_OFF, FRAGMENTS, SAMPLE))


@dataclass(frozen=True)
class DbSample:
    db: int
    foreign: int        # keys of the sample outside the projects' prefixes
    sampled: int
    keys: int           # the database's keys in all (INFO keyspace)


@dataclass(frozen=True)
class Signs:
    """What the survey found that is not fabcelery's."""

    dbs: tuple[DbSample, ...] = ()
    clients: tuple[str, ...] = ()       # addresses of clients connected as `default`
    requirepass: bool = False           # redis.conf has a requirepass line
    password: bool = False              # the default user asks for a password (NOAUTH)
    users: tuple[str, ...] = ()         # ACL users fabcelery did not make

    def __bool__(self) -> bool:
        return bool(self.dbs or self.clients or self.requirepass or self.password or self.users)


def projects(inventory: Inventory, survey: dict[str, str]) -> set[str]:
    """fabcelery's projects on this Redis: this one, and every one with a fragment there."""
    names = {inventory.project.name}
    for path in survey.get("fragments", "").splitlines():
        base = path.rpartition("/")[2]
        if base.startswith("fabcelery-") and base.endswith(".conf"):
            names.add(base.removeprefix("fabcelery-").removesuffix(".conf"))
    return names


def read_signs(inventory: Inventory, survey: dict[str, str]) -> Signs:
    """The survey's sections (Facts.redis_survey) as Signs."""
    ours = projects(inventory, survey)
    ping = survey.get("ping", "").strip()
    try:
        requirepass = int(survey.get("requirepass", "0").strip() or 0) > 0
    except ValueError:
        requirepass = False
    clients = _clients(survey.get("clients", ""))
    users = tuple(u for u in (line.strip() for line in survey.get("users", "").splitlines())
                  if u and u != "default" and u not in ours)
    totals = {}
    for line in survey.get("keyspace", "").splitlines():
        name, _, rest = line.strip().partition(":")
        if name.startswith("db") and name[2:].isdigit():
            keys = dict(part.partition("=")[::2] for part in rest.split(",")).get("keys", "")
            totals[int(name[2:])] = int(keys) if keys.isdigit() else 0
    dbs = []
    for key, text in survey.items():
        if not (key.startswith("db:") and key[3:].isdigit()):
            continue
        foreign = sampled = 0
        for line in text.splitlines():
            count, _, prefix = line.partition(" ")
            if not count.isdigit():
                continue
            sampled += int(count)
            if prefix not in ours:
                foreign += int(count)
        if foreign:
            db = int(key[3:])
            dbs.append(DbSample(db, foreign, sampled, totals.get(db, sampled)))
    return Signs(dbs=tuple(sorted(dbs, key=lambda d: d.db)), clients=clients, requirepass=requirepass,
                 password=ping.startswith(("NOAUTH", "WRONGPASS")), users=users)


def _clients(text: str) -> tuple[str, ...]:
    """The addresses of the clients connected as `default`, from `CLIENT ID` then `CLIENT LIST`:
    the probe's own connection (that id) left out."""
    lines = text.splitlines()
    own = lines[0].strip() if lines else ""
    found = []
    for line in lines[1:]:
        fields = dict(part.partition("=")[::2] for part in line.split())
        if fields.get("user") == "default" and fields.get("id") != own and fields.get("addr"):
            found.append(fields["addr"])
    return tuple(found)


def shared_redis_problem(target: Target, facts: Facts) -> str:
    """'' (go on), or the paragraph that stops the host before anything changes: Redis serves
    others, and the deploy would turn the default user they use off."""
    if not survey_needs(target).redis_survey:
        return ""
    if facts.lines.get((REDIS_CONF, REDIS_DEFAULT_OFF)) or not facts.redis_survey:
        return ""       # already off, or no Redis here yet
    if facts.checksums.get(OLD_REDIS_FRAGMENT):
        return ""       # set up by an earlier fabcelery, whose workers used the default user: its own
    signs = read_signs(target.inventory, facts.redis_survey)
    return refusal(target.inventory, signs) if signs else ""


def refusal(inventory: Inventory, signs: Signs) -> str:
    found = []
    if signs.dbs:
        ours = f"{inventory.project.name}:"
        where = "; ".join(f"db {d.db} ({d.foreign} of {d.sampled} keys sampled, {d.keys} in all)"
                          for d in signs.dbs)
        found.append(f"keys outside fabcelery's projects' prefixes (such as {ours}) in {where}")
    if signs.clients:
        n = len(signs.clients)
        shown = ", ".join(signs.clients[:SHOWN]) + (f" and {n - SHOWN} more" if n > SHOWN else "")
        found.append(f"{n} client{'s' if n > 1 else ''} connected as the default user ({shown})")
    if signs.requirepass:
        found.append(f"a requirepass in {REDIS_CONF} (its clients log in as the default user with that password)")
    elif signs.password:
        found.append("a default user that asks for a password (its clients log in as the default user with it)")
    if signs.users:
        found.append(f"ACL users that fabcelery did not make ({', '.join(signs.users)})")
    return (f"Redis on this host serves others besides fabcelery's projects: {'; '.join(found)}. This deploy "
            f"would turn Redis's default user off ({REDIS_DEFAULT_OFF} in {REDIS_CONF}, so that every project "
            "logs in with an account of its own), and everything that uses that default user would then get "
            "'NOAUTH Authentication required.'. Either give them accounts of their own (Redis ACL users) and "
            "point them at those, then deploy again; or, to turn the default user off anyway, set "
            f"`broker: {{redis_default_user: {ACCEPT}}}` in {inventory.path}")
