"""What `celery inspect ... --json` printed, read by check_queues.py and explain_verify.py: text()
puts this file where they import it, for they run alone (python3 -I -S -c)."""
import json


def replies(text):
    # the JSON is the last line that starts with '{' (celery may print warnings before it)
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}
