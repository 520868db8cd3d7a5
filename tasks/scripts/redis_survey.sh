# redis_survey REDIS_CONF FRAGMENT_GLOB SAMPLE: signs that a running Redis serves others, for
# the deploy's probe (tasks/probe.py), which calls it only where redis.conf does not turn the
# passwordless default user off yet (tasks/shared_redis.py decides from what it prints). After
# sections.sh. It connects as that default user, with no password (root, redis-cli only), and
# prints no key's value and no password: counts of key prefixes, client lines, user names.
#   survey:ping       what the default user's PING gets (PONG, NOAUTH ..., Could not connect ...)
#   survey:requirepass  how many requirepass lines REDIS_CONF has (the count only)
#   survey:fragments  the files FRAGMENT_GLOB names (fabcelery's projects on this Redis)
#   survey:clients    CLIENT ID (this connection's), then CLIENT LIST
#   survey:users      ACL USERS
#   survey:keyspace   INFO keyspace
#   survey:db:N       for each database with keys: "COUNT PREFIX" for the text before the first
#                     ':' of the first SAMPLE keys SCAN returns (an empty PREFIX: keys without ':')

redis_survey() {
  _conf=$1
  _glob=$2
  _sample=$3
  _ping=$(timeout 3 redis-cli ping 2>&1 | head -n 1)
  kv survey:ping "$(printf '%s' "$_ping" | b64)"
  kv survey:requirepass "$(grep -Ecs '^[[:space:]]*requirepass[[:space:]]' "$_conf" | b64)"
  # shellcheck disable=SC2086 # the glob is meant to expand
  kv survey:fragments "$(for f in $_glob; do if [ -f "$f" ]; then printf '%s\n' "$f"; fi; done | b64)"
  [ "$_ping" = PONG ] || return 0
  kv survey:clients "$(printf 'CLIENT ID\nCLIENT LIST\n' | timeout 3 redis-cli 2>&1 | head -n 1001 | b64)"
  kv survey:users "$(timeout 3 redis-cli ACL USERS 2>&1 | head -n 1000 | b64)"
  _keyspace=$(timeout 3 redis-cli INFO keyspace 2>&1 | tr -d '\r')
  kv survey:keyspace "$(printf '%s' "$_keyspace" | b64)"
  for _db in $(printf '%s\n' "$_keyspace" | sed -n 's/^db\([0-9][0-9]*\):keys=.*/\1/p'); do
    kv "survey:db:$_db" "$(timeout 5 redis-cli -n "$_db" --scan 2>/dev/null | head -n "$_sample" |
      awk -F: 'NF > 1 { n[$1]++; next } { n[""]++ } END { for (p in n) printf "%d %s\n", n[p], p }' | b64)"
  done
}
