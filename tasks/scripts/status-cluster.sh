# fab status on a node of a RabbitMQ cluster, after status.sh: one CLI call tells whether the
# node runs, its members, partitions and alarms. The project's queues (--queues) come over
# AMQP on loopback, as the project's account (--amqpuser, --vhost, --passwordfile): each one's
# ready messages and consumers (tasks/scripts/amqp_queues.py, given as --amqppy, run by the
# system's Python), milliseconds beside the CLI's Erlang VM. A node that is down answers
# neither; tasks/queues.py takes the queues from a node that runs. Each node keeps its own
# history of them for the stall rule (status-stall.sh).

# shellcheck disable=SC2086 # the queues: one argument each (names without blanks, set -f)
amqp_queues() {
  timeout 10 /usr/bin/python3 -I -S -c "$amqppy" 127.0.0.1 5672 "$amqpuser" "$vhost" "$passwordfile" $queues
}

if command -v rabbitmqctl >/dev/null; then
  section cluster timeout 20 rabbitmqctl -q cluster_status --formatter json
  # kept in $_broker for status-stall.sh
  _broker=$(amqp_queues 2>&1)
  _rc=$?
  kv rabbitmq "$(printf '%s' "$_broker" | b64)" "$_rc"
  _brokerkind=amqp
fi
