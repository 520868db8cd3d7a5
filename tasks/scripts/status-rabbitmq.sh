# fab status on a RabbitMQ host of its own, after status.sh: the project's queues (--vhost),
# waiting, unacknowledged and consumers, as JSON (tasks/queues.py reads it). The answer also
# tells that the node runs; only when it fails is the node pinged (the broker's row then says
# whether it runs, and the queues are unknown). One CLI call in the healthy case, as the
# ping it replaces.

rabbit_status() {
  if _out=$(timeout 10 rabbitmqctl -q list_queues -p "$vhost" name messages_ready messages_unacknowledged \
      consumers --formatter json 2>/dev/null); then
    printf '%s\n' "$_out"
    return 0
  fi
  timeout 10 rabbitmq-diagnostics -q ping
}

if command -v rabbitmq-diagnostics >/dev/null; then
  # kept in $_broker for status-stall.sh
  _broker=$(rabbit_status 2>&1)
  _rc=$?
  kv rabbitmq "$(printf '%s' "$_broker" | b64)" "$_rc"
  _brokerkind=rabbitmq
fi
