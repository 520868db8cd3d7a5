# fab restart-broker on a RabbitMQ node, after lib.sh: broker_up waits (bounded, --timeout
# seconds) until the node has started.

broker_up() { timeout "$timeout" rabbitmqctl -q await_startup; }
