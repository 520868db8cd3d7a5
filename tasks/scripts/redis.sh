# The project's Redis account (--redisuser) answers ping, after lib.sh. redis-cli takes the
# password from REDISCLI_AUTH, read from the 0600 file (--passwordfile): never an argument.

redis_ping() {
  if [ -s "$passwordfile" ]; then REDISCLI_AUTH="$(cat "$passwordfile")"; export REDISCLI_AUTH; fi
  timeout 3 redis-cli --user "$redisuser" ping
}
