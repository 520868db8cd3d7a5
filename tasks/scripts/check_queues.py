"""Does every worker answer, consuming exactly its queues? Reads `celery inspect active_queues
--json` on stdin.

Run as root by /usr/bin/python3 -I -S (a system binary); what it reads comes from the
workers and is only compared, never obeyed. Arguments: NODE=QUEUE,QUEUE... (exactly
these queues) or NODE=* (any: a pool on the project's default queue). Exit 0 when every
node answered as expected; else 1, with one line per node that did not.
"""
import sys

from .celery_json import replies


def main(expected):
    answered = replies(sys.stdin.read())
    problems = []
    for item in expected:
        node, _, want = item.partition("=")
        if node not in answered:
            problems.append(f"{node}: no answer")
            continue
        queues = sorted(q.get("name", "?") for q in answered[node] if isinstance(q, dict))
        if want != "*" and queues != sorted(want.split(",")):
            problems.append(f"{node}: consumes {', '.join(queues) or 'nothing'}, not {want.replace(',', ', ')}")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
