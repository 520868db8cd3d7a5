# fab status on every host, after status.sh: the processes that may run celery beat (supervisord's
# program, or one started by hand), found by an argument `beat` (or a worker's -B / --beat) in
# one grep over every process's command line; tasks/beats.py keeps those of this project's app.
# One line each: PID PPID UID ARGS, the arguments separated by \037.

beat_processes() {
  set +f
  # the patterns are not their own text: grep does not find itself
  grep -lsxz -e 'bea[t]' -e '-[B]' -e '--bea[t]' /proc/[0-9]*/cmdline | while IFS= read -r _f; do
    _d=${_f%/cmdline}
    _ids=$(awk '/^PPid:/ { p = $2 } /^Uid:/ { u = $2 } END { print p, u }' "$_d/status" 2>/dev/null) || continue
    _args=$(tr '\0' '\037' < "$_f" 2>/dev/null) || continue
    printf '%s %s %s\n' "${_d#/proc/}" "$_ids" "$_args"
  done
  _rc=$?
  set -f
  return $_rc
}

section beats beat_processes
