"""Staged, validated, atomic installs: the script that puts a step's uploads in place on the
host (after Remote.upload_private sent them), and the validator of each kind of file
(plan.Validator): supervisor's own parser, redis-server, sh -n, Erlang's file:consult, logrotate.

Deciding which check a file gets is the step's (its Upload names a Validator); the SSH layer
(tasks/remote.py) only carries the script.
"""

from __future__ import annotations

from collections.abc import Callable

from .layout import Layout, stage_path
from .plan import Upload, Validator
from .scripts import install_nofollow, text
from .shell import cmd

# checked by supervisor's parser, all such files of an install in one run (value: its kind there)
SUPERVISOR = (Validator.SUPERVISORD, Validator.PROGRAMS)


def validate_command(layout: Layout, checks: list[tuple[str, str]]) -> str:
    """supervisor's own parser, in the virtualenv, run as the project user (never as root).
    checks: (kind, path), kind 'main' or 'programs'."""
    return cmd("runuser", "-u", layout.project.user, "--", f"{layout.venv_bin}/python", "-c",
               text("validate_supervisor.py"), *[f"{kind}:{path}" for kind, path in checks])


def install_script(tmpdir: str, uploads: tuple[Upload, ...], layout: Layout, before_rename: str = "") -> str:
    """Stage each upload beside its target (restrictive mode from the start), validate, then rename.

    A file that fails validation is never installed, and nothing else happens: the
    running services are left as they are. `before_rename` runs after validation and
    before the first rename (the deploy records there what it still has to apply).
    Every rename is atomic: a target is always the old file or the new one, never a
    part; a run cut off leaves at most hidden staging files, which the next overwrites.
    A target where the project user can write (settings_local.py) is staged and renamed
    in one go by tasks/scripts/nofollow.py, which follows no link the user put there.
    """
    run = tmpdir.rpartition("/")[2].rpartition(".")[2]   # mktemp's random part: staging names of this run
    staged = [stage_path(u.target, run) for u in uploads]
    plain = [stage for upload, stage in zip(uploads, staged, strict=True) if not upload.nofollow]
    lines = ["set -e", "trap " + cmd("rm -rf " + " ".join(cmd(p) for p in [tmpdir, *plain])) + " EXIT"]
    # what a run cut off before its trap left (under the project's lock, no other run stages now)
    lines += [f"rm -f {cmd(stage_path(u.target, ''))}*" for u in uploads if not u.nofollow]
    for index, (upload, stage) in enumerate(zip(uploads, staged, strict=True)):
        if upload.nofollow:
            continue
        # install(1) creates the file 0600 and only then sets owner and mode
        lines.append(cmd("install", "-o", upload.owner, "-g", upload.group, "-m", upload.mode,
                         f"{tmpdir}/{index}", stage))
    supervisor = [(u, stage) for u, stage in zip(uploads, staged, strict=True) if u.validate in SUPERVISOR]
    if supervisor:
        lines.append(_refuse_unless(validate_command(layout, [(u.validate.value, stage) for u, stage in supervisor]),
                                    "supervisor's parser", [u.target for u, _ in supervisor]))
    for upload, stage in zip(uploads, staged, strict=True):
        if upload.validate in CHECKS:
            check, checker = CHECKS[upload.validate]
            lines.append(_refuse_unless(check(stage), checker, [upload.target]))
    if before_rename:
        lines.append(before_rename)
    lines += [install_nofollow(f"{tmpdir}/{index}", upload.owner, upload.group, upload.mode, upload.target)
              if upload.nofollow else cmd("mv", "-f", stage, upload.target)
              for index, (upload, stage) in enumerate(zip(uploads, staged, strict=True))]
    return "\n".join(lines)



def _refuse_unless(check: str, checker: str, targets: list[str]) -> str:
    message = (f"{checker} rejects the new {', '.join(targets)} (staged as .NAME.fabcelery-new.RUN, shown above): "
               "nothing was installed, the running services were left as they are")
    return f"if ! {check}; then echo {cmd(message)} >&2; exit 1; fi"


def erlang_terms_check(stage: str) -> str:
    """A file of Erlang terms (an inetrc) read with Erlang's own parser, file:consult/1; the
    path reaches Erlang through the environment, not inside Erlang source."""
    script = ('case file:consult(os:getenv("FABCELERY_CHECK")) of {ok, _} -> halt(0); '
              'Error -> io:format(standard_error, "~p~n", [Error]), halt(1) end.')
    return cmd("env", f"FABCELERY_CHECK={stage}", "erl", "-noshell", "-noinput", "-eval", script)


def redis_check(stage: str) -> str:
    """Redis has no config-test mode: start a throw-away redis-server on the staged file as the
    redis user, listening on a private socket only and saving nothing. A config error ends
    it at once ("FATAL CONFIG FILE ERROR", shown without the offending line, which may be the
    password); once its socket appears the config has loaded, and it is stopped."""
    return "\n".join([
        "(",
        '  d=$(mktemp -d) && chown redis "$d" && cd "$d" || exit 1',
        "  setpriv --reuid=redis --regid=redis --clear-groups redis-server " + cmd(stage)
        + ' --port 0 --unixsocket "$d/check.sock" --dir "$d" --save \'\' --appendonly no --daemonize no'
        " --supervised no --pidfile '' --logfile '' >\"$d/out\" 2>&1 &",
        "  pid=$! ok=1 i=0",
        '  while kill -0 "$pid" 2>/dev/null; do',
        # its socket: the config has loaded (and so has it if no error came in 10 s)
        '    if [ -S "$d/check.sock" ] || [ "$i" -ge 100 ]; then ok=0; break; fi',
        "    i=$((i+1)); sleep 0.1",
        "  done",
        '  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null',
        "  [ $ok -eq 0 ] || sed -n '/FATAL CONFIG FILE ERROR/,$p' \"$d/out\" | grep -v '^>>>' >&2",
        '  rm -rf "$d"; exit $ok',
        ")",
    ])


def logrotate_check(stage: str) -> str:
    """`logrotate -d` (debug: reads the file, rotates nothing, writes no state) on the staged file
    alone. It exits 0 after an unknown option (a warning, the line ignored): refused too."""
    return ("( out=$(logrotate -d -s /dev/null " + cmd(stage) + " 2>&1); rc=$?\n"
            "  problems=$(printf '%s\\n' \"$out\" | grep -E '^error:|unknown option')\n"
            "  [ $rc -eq 0 ] && [ -z \"$problems\" ] && exit 0\n"
            "  printf '%s\\n' \"${problems:-$out}\" | tail -n 20 >&2; exit 1 )")


# every other validator: (the check of a staged file, who checks it)
CHECKS: dict[Validator, tuple[Callable[[str], str], str]] = {
    Validator.REDIS: (redis_check, "redis-server"),
    Validator.SH: (lambda stage: cmd("sh", "-n", stage), "sh -n"),
    Validator.ERLANG: (erlang_terms_check, "Erlang's file:consult"),
    Validator.LOGROTATE: (logrotate_check, "logrotate"),
}
