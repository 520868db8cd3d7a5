"""Send a task with the project's own Celery app and print its result as JSON.

    python -m demo_proj.sendtask add 2 3
    python -m demo_proj.sendtask --queue exports where
"""

import json
import sys

from demo_proj.celery import app


def main(argv):
    queue = None
    if argv[:1] == ["--queue"]:
        queue, argv = argv[1], argv[2:]
    name, args = argv[0], [json.loads(a) if a[:1] in "0123456789[{\"-" else a for a in argv[1:]]
    result = app.send_task(f"demo_proj.tasks.{name}", args=args, queue=queue)
    print(json.dumps(result.get(timeout=60)))


if __name__ == "__main__":
    main(sys.argv[1:])
