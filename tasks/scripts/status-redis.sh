# fab status on a Redis host, after status.sh and redis.sh.

if command -v redis-cli >/dev/null; then section redis redis_ping; fi
