# fab status, last: the stall rule's histories (tasks/scripts/stall_rule.py, given as --stallpy),
# kept in --stallstate on this host. The worker programs' pids come from status.sh ($_sv), the
# broker's answers from status-redis.sh or status-rabbitmq.sh ($_broker); --pools and --queues
# say which queues each pool consumes. No command of its own asks anything more.

stall_programs() { printf '%s\n' "$_sv" | /usr/bin/python3 -I -S -c "$stallpy" programs "$stallstate" -; }
# shellcheck disable=SC2086 # the queues: one argument each (names without blanks, set -f)
stall_queues() {
  printf '%s\n' "$_broker" | /usr/bin/python3 -I -S -c "$stallpy" "$_brokerkind" "$stallstate" - "$pools" $queues
}

if [ -n "$_sv" ] && [ -d "${stallstate%/*}" ]; then section stallprograms stall_programs; fi
if [ -n "${_brokerkind:-}" ] && [ -d "${stallstate%/*}" ]; then section stallqueues stall_queues; fi

# the watchdog's state (celery.watchdog, --watchdogstate): its last restart of each program
# (tasks/scripts/watchdog.py); a file of the project user's, read without following a link
if [ -n "${watchdogstate:-}" ] && [ -f "$watchdogstate" ]; then
  section watchdog dd if="$watchdogstate" iflag=nofollow status=none
fi
