# fab status on a RabbitMQ host of its own, after status.sh.

if command -v rabbitmq-diagnostics >/dev/null; then section rabbitmq timeout 10 rabbitmq-diagnostics -q ping; fi
