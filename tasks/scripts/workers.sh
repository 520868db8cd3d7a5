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

# wait_ready PROGRAM...: every program RUNNING and every worker answering, bounded (--readytimeout)
wait_ready() {
  _deadline=$(($(date +%s) + readytimeout))
  while :; do
    _st=$(ctl status "$@" 2>&1)
    _ping=''
    _ok=no
    if [ "$(printf '%s\n' "$_st" | grep -c ' RUNNING ')" -ge $# ]; then
      if [ -z "$nodes" ]; then
        _ok=yes
      elif _ping=$(celery_ping 2>&1) && answered "$_ping"; then
        _ok=yes
      fi
    fi
    # FATAL (supervisord gave up) and unknown programs do not get better by waiting
    case "$_st" in *' FATAL '* | *'no such process'*) _deadline=0 ;; esac
    if [ "$_ok" = yes ] || [ "$(date +%s)" -ge "$_deadline" ]; then
      printf '%s\n%s\n' "$_st" "$_ping"
      [ "$_ok" = yes ]
      return
    fi
    sleep 1
  done
}

# after `section ready wait_ready`: when it failed, the last lines of the programs' logs (--logs)
tail_if_failed() {
  # shellcheck disable=SC2086 # a list of paths
  [ "$_rc" = 0 ] || section log tail -n 15 $logs
}
