# fab status, last: the stall rule's histories (tasks/scripts/stall_rule.py, given as --stallpy),
# kept in --stallstate on this host, advanced by one run of the system's Python: the worker
# programs' pids from status.sh ($_sv), the broker's answers from status-redis.sh,
# status-rabbitmq.sh or status-cluster.sh ($_broker, of kind $_brokerkind); --pools and --queues
# say which queues each pool consumes. No command of its own asks anything more.

# shellcheck disable=SC2086 # the queues: one argument each (names without blanks, set -f)
stall_histories() {
  if [ -n "${_brokerkind:-}" ]; then
    printf '%s\n@@broker\n%s\n' "$_sv" "$_broker" |
      /usr/bin/python3 -I -S -c "$stallpy" "$stallstate" - "$_brokerkind" "$pools" $queues
  else
    printf '%s\n' "$_sv" | /usr/bin/python3 -I -S -c "$stallpy" "$stallstate" -
  fi
}

if { [ -n "$_sv" ] || [ -n "${_brokerkind:-}" ]; } && [ -d "${stallstate%/*}" ]; then section stall stall_histories; fi

# the watchdog's state (celery.watchdog, --watchdogstate): its last restart of each program
# (tasks/scripts/watchdog.py); a file of the project user's, read without following a link
if [ -n "${watchdogstate:-}" ] && [ -f "$watchdogstate" ]; then
  section watchdog dd if="$watchdogstate" iflag=nofollow status=none
fi
