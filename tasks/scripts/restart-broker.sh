# fab restart-broker: restart this host's broker (--unit) and wait until it is back, after
# lib.sh and broker-up-KIND.sh (broker_up). On a node of a RabbitMQ cluster (--expected: every
# node's name, sorted, blank-separated) it first waits (bounded, --timeout seconds) until every
# quorum queue has a member more online than its quorum and checks that no queue depends on
# this node (RabbitMQ's rolling-upgrade checks); after the restart it waits until every node
# of the cluster runs and the quorum queues have all their members online again.

running_nodes() {
  timeout 20 rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
    /usr/bin/python3 -I -S -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["running_nodes"])))' \
      2>/dev/null
}

all_running() { [ "$(running_nodes)" = "$expected" ]; }

wait_all() {
  _i=0
  until all_running; do
    _i=$((_i + 1))
    [ "$_i" -lt $((timeout / 2)) ] || return 1
    sleep 2
  done
}

_rc=0
if [ -n "$expected" ]; then
  section quorum timeout $((timeout + 10)) rabbitmq-upgrade -q -t "$timeout" await_online_quorum_plus_one
  if [ "$_rc" = 0 ]; then
    section critical timeout 60 rabbitmq-diagnostics -q check_if_node_is_quorum_critical
  fi
fi
if [ "$_rc" = 0 ]; then
  section restart systemctl restart "$unit"
  if [ "$_rc" = 0 ]; then section startup broker_up; fi
  if [ -n "$expected" ]; then
    if [ "$_rc" = 0 ]; then section back wait_all; fi
    if [ "$_rc" = 0 ]; then
      section synced timeout $((timeout + 10)) rabbitmq-upgrade -q -t "$timeout" await_online_quorum_plus_one
    fi
  fi
fi
