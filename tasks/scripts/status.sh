# fab status: supervisord's programs (--conf, --socket, --statuspy), after lib.sh; a broker
# host's part follows (status-redis.sh, status-rabbitmq.sh or status-cluster.sh).

if [ -x /usr/bin/python3 ] && [ -f "$conf" ]; then
  section supervisor sv_status
fi
