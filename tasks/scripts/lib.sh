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
