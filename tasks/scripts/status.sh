# fab status: supervisord's programs (--conf, --socket, --statuspy), after lib.sh; a broker
# host's part follows (status-redis.sh, status-rabbitmq.sh or status-cluster.sh).

_sv=''
if [ -x /usr/bin/python3 ] && [ -f "$conf" ]; then
  # kept in $_sv for status-stall.sh (the worker programs' pids)
  _sv=$(sv_status 2>&1)
  _rc=$?
  kv supervisor "$(printf '%s' "$_sv" | b64)" "$_rc"
fi
