"""fabcelery: Fabric tasks that deploy and run a supervised Celery cluster."""
