# fab status on a Redis host, after status.sh and redis.sh: one redis-cli as the project's
# account answers PING, then LLEN of each queue's list and HLEN of kombu's unacked hash
# (--keys, the key names in that order; tasks/queues.py reads the answers, one line each),
# then LINDEX -1 of each queue and HVALS of the unacked hash (tasks/scripts/stall_rule.py).

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
  # for the stall rule (status-stall.sh): each queue's oldest message, the messages held
  for _k in $keys; do
    [ "$_k" = "$_last" ] || _commands="$_commands
LINDEX $_k -1"
  done
  [ -n "$_last" ] && _commands="$_commands
HVALS $_last"
  printf '%s\n' "$_commands" | timeout 3 redis-cli --user "$redisuser"
}

if command -v redis-cli >/dev/null; then
  # kept in $_broker for status-stall.sh
  _broker=$(redis_status 2>&1)
  _rc=$?
  kv redis "$(printf '%s' "$_broker" | b64)" "$_rc"
  _brokerkind=redis
fi
