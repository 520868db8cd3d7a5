# What the day-two programs share (tasks/operation.py), after sections.sh. Their values come
# as options, `--NAME VALUE` (each sets $NAME), then `--` and the programs' names ("$@").

while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    --*[!a-z]*) echo "$0: not an option: $1" >&2; exit 2 ;;
    --?*) eval "${1#--}=\$2"; shift 2 ;;
    *) break ;;
  esac
done
export LC_ALL=C
# lists of names and paths without blanks (the inventory's validation): split, never globbed
set -f

# supervisorctl is the virtualenv's: run as the project user, never as root
ctl() { runuser -u "$user" -- "$venv/bin/supervisorctl" -c "$conf" "$@"; }

# `each start a b`: one supervisorctl per program, at the same time (each one waits: a stop
# for the warm shutdown, a start for startsecs)
each() {
  _action=$1
  shift
  for _p in "$@"; do ctl "$_action" "$_p" & done
  wait
}

# the process of a pid file runs; the file may lie in a directory of the project user's: read
# without following a link (and `kill -0` only asks)
pid_alive() { [ -s "$1" ] && kill -0 "$(dd if="$1" iflag=nofollow status=none 2>/dev/null)" 2>/dev/null; }

supervisord_running() { pid_alive "$pidfile"; }

# what `supervisorctl status` prints, read over the socket by root with the system's Python
# (tasks/scripts/supervisor_status.py, given as --statuspy); exit status 4: no supervisord
sv_status() { /usr/bin/python3 -I -S -c "$statuspy" "$socket"; }

# wait_running DEADLINE PROGRAM...: until sv_status says every program is RUNNING (0; a group's
# `name:process` rows count for it). Ends at once when a program is FATAL (1: supervisord gave
# up on it) or missing from supervisord's answer (3: it does not know it), and at DEADLINE, in
# epoch seconds (2). $_st keeps the last status, for the caller's words. Written once: the
# deploy's verify step runs this function too (tasks/supervisor.py verify_script).
wait_running() {
  _deadline=$1
  shift
  while :; do
    _svrc=0
    _st=$(sv_status 2>&1) || _svrc=$?
    _up=0
    for _p in "$@"; do
      _row=$(printf '%s\n' "$_st" | grep -E "^$_p(:[^ ]*)? ")
      case "$_row" in
        *' RUNNING '*) _up=$((_up + 1)) ;;
        *' FATAL '*) return 1 ;;
        '') [ "$_svrc" != 0 ] || return 3 ;;
      esac
    done
    [ "$_up" -lt $# ] || return 0
    [ "$(date +%s)" -lt "$_deadline" ] || return 2
    sleep 0.5
  done
}
