# fab status on a node of a RabbitMQ cluster, after status.sh: one CLI call tells whether the
# node runs, its members, partitions and alarms; another, at the same time, the project's
# queues (--vhost) as this node sees them (a node that is down answers nothing: tasks/queues.py
# takes the queues from a node that runs).

if command -v rabbitmqctl >/dev/null; then
  _queues=$(mktemp)
  section rabbitmq timeout 10 rabbitmqctl -q list_queues -p "$vhost" name messages_ready messages_unacknowledged \
    consumers --formatter json >"$_queues" &
  section cluster timeout 20 rabbitmqctl -q cluster_status --formatter json
  wait
  cat "$_queues"
  rm -f "$_queues"
fi
