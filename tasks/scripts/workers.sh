# The workers of this host (--workers: PROGRAM=FILE, each its program file) and how to wait
# for them, after lib.sh.

# Each worker's node name is read from its program file (`--hostname=NODE`, which the deploy
# wrote there: tasks/programs.py node_name), so it is decided in one place, and it is the name
# the running worker has even if the host was renamed since. No file: the program is not
# deployed, and its node cannot answer.
nodes=''
for _w in $workers; do
  _n=$(sed -n 's/^command=.* --hostname=\([^ ]*\).*$/\1/p' "${_w#*=}" 2>/dev/null)
  nodes="${nodes:+$nodes,}${_n:-${_w%%=*}@not-deployed}"
done
home="$(getent passwd "$user" | cut -d: -f6)"

# one celery process for all of them: it returns once every node named has answered
celery_ping() {
  runuser -u "$user" -- env HOME="$home" "$venv/bin/celery" -A "$app" --workdir "$workdir" \
    inspect ping -d "$nodes" --timeout "$pingtimeout"
}

# every node named answered (`->  NODE: OK`); one that did not fails it
answered() {
  _o=$(printf '%s\n' "$1" | tr -s ' ')
  for _n in $(printf '%s' "$nodes" | tr ',' ' '); do
    case "$_o" in *"-> $_n: OK"*) ;; *) return 1 ;; esac
  done
}

# wait_ready PROGRAM...: every program RUNNING (lib.sh's wait_running), then every worker
# answering, bounded (--readytimeout); prints the programs' status and the workers' answer
wait_ready() {
  _deadline=$(($(date +%s) + readytimeout))
  _ping=''
  _ok=0
  wait_running "$_deadline" "$@" || _ok=$?
  if [ "$_ok" = 0 ] && [ -n "$nodes" ]; then
    until _ping=$(celery_ping 2>&1) && answered "$_ping"; do
      if [ "$(date +%s)" -ge "$_deadline" ]; then _ok=2; break; fi
      sleep 1
    done
    # what supervisord says now: a program may have stopped while the workers were asked
    _st=$(sv_status 2>&1)
  fi
  printf '%s\n%s\n' "$_st" "$_ping"
  [ "$_ok" = 0 ]
}

# after `section ready wait_ready`: when it failed, the last lines of the programs' logs (--logs)
tail_if_failed() {
  # shellcheck disable=SC2086 # a list of paths
  [ "$_rc" = 0 ] || section log tail -n 15 $logs
}
