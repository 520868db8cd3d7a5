# fab restart-broker on a Redis host, after lib.sh: broker_up waits (bounded) until Redis is
# back, which means it answers the project's own account (the default user is off: NOAUTH);
# the password from the 0600 file (--passwordfile) in REDISCLI_AUTH, the account --redisuser.

broker_up() {
  if [ -s "$passwordfile" ]; then REDISCLI_AUTH="$(cat "$passwordfile")"; export REDISCLI_AUTH; fi
  _i=0
  until [ "$(timeout 3 redis-cli --user "$redisuser" ping 2>&1 | head -n1)" = PONG ]; do
    _i=$((_i + 1))
    [ "$_i" -lt 120 ] || return 1
    sleep 0.5
  done
}
