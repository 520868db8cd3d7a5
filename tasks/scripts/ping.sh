# fab ping: does each worker of this host answer? After lib.sh and workers.sh.

section node printf %s "$nodes"
section ping celery_ping
