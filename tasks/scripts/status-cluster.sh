# fab status on a node of a RabbitMQ cluster, after status.sh: one CLI call tells whether the
# node runs, its members, partitions and alarms.

if command -v rabbitmqctl >/dev/null; then
  section cluster timeout 20 rabbitmqctl -q cluster_status --formatter json
fi
