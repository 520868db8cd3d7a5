# fab status on a Redis host, after status.sh and redis.sh: one redis-cli as the project's
# account answers PING, then LLEN of each queue's list and HLEN of kombu's unacked hash
# (--keys, the key names in that order; tasks/queues.py reads the answers, one line each).

redis_status() {
  if [ -s "$passwordfile" ]; then REDISCLI_AUTH="$(cat "$passwordfile")"; export REDISCLI_AUTH; fi
  _last=''
  _commands='PING'
  for _k in $keys; do
    [ -n "$_last" ] && _commands="$_commands
LLEN $_last"
    _last=$_k
  done
  [ -n "$_last" ] && _commands="$_commands
HLEN $_last"
  printf '%s\n' "$_commands" | timeout 3 redis-cli --user "$redisuser"
}

if command -v redis-cli >/dev/null; then section redis redis_status; fi
