"""The stall rule (tasks/scripts/stall_rule.py): observations in, stalled or not and why out,
as tables; and the server-side command, run as the servers run it, on a state file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.scripts import stall_rule as r
from tasks.scripts import text

A, B = "exports@h1", "exports@h2"


def history(*samples: tuple[float, int | None, int | None, str | None]) -> dict:
    """The queue's history after the samples (time, waiting, held, head), in order."""
    h: dict = {}
    for now, waiting, held, head in samples:
        h = r.advance_queue(h, r.QueueSample("exports", waiting, held, head), now)
    return h


@pytest.mark.parametrize("samples, expected", [
    # (time, waiting, held, head) ...                            -> (head_since, free_since)
    ([(0, 0, 0, None)], (None, None)),
    ([(0, 3, 0, "m1")], (0, 0)),
    ([(0, 3, 0, "m1"), (10, 3, 0, "m1")], (0, 0)),                     # nothing moved: free since 0
    ([(0, 3, 0, "m1"), (10, 3, 0, "m2")], (10, 10)),                   # the oldest was taken: progress
    ([(0, 3, 1, "m1"), (10, 3, 0, "m1")], (0, 10)),                    # held one at 0: busy then
    ([(0, 3, 0, "m1"), (5, 0, 0, None), (10, 2, 0, "m3")], (10, 10)),  # emptied in between
    ([(0, 3, 0, None), (10, 3, 0, None)], (None, 0)),                  # RabbitMQ: no head shown
    ([(0, 3, None, "m1"), (10, 3, None, "m1")], (0, None)),            # held unknown: never free
    ([(0, None, 0, None)], (None, None)),                              # waiting unknown
])
def test_the_queue_history_tracks_the_oldest_message_and_free_slots(samples, expected):
    h = history(*samples)
    assert (h["head_since"], h["free_since"]) == expected


@pytest.mark.parametrize("samples, consumers, now, stalled, culprits", [
    # nothing waits: never stalled
    ([(0, 0, 0, None)], [r.Consumer(A, False)], 100, False, ()),
    # messages wait and nothing runs: stalled at once
    ([(0, 3, 0, "m1")], [r.Consumer(A, False)], 0, True, ()),
    # free slots for less than stalled_after: not yet
    ([(0, 3, 0, "m1"), (5, 3, 0, "m1")], [r.Consumer(A, True)], 5, False, ()),
    # free slots for stalled_after: stalled, the running consumer named
    ([(0, 3, 0, "m1"), (10, 3, 0, "m1")], [r.Consumer(A, True)], 10, True, (A,)),
    # every slot taken (held), however long the oldest waits: flowing
    ([(0, 3, 2, "m1"), (100, 3, 2, "m1")], [r.Consumer(A, True)], 100, False, ()),
    # working down a backlog: the oldest changes every sample
    ([(0, 9, 0, "m1"), (4, 8, 0, "m2"), (8, 7, 0, "m3"), (12, 9, 0, "m4")], [r.Consumer(A, True)], 12, False, ()),
    # frozen for stalled_after, even with messages held (RabbitMQ pushed them): stalled
    ([(0, 3, 4, None), (10, 3, 4, None)], [r.Consumer(A, True, 0)], 10, True, (A,)),
    # frozen for less than stalled_after: not yet
    ([(0, 3, 4, None), (10, 3, 4, None)], [r.Consumer(A, True, 5)], 10, False, ()),
    # one of two frozen, the other busy: the queue still flows
    ([(0, 3, 4, None), (10, 3, 4, None)], [r.Consumer(A, True, 0), r.Consumer(B, True)], 10, False, ()),
])
def test_the_rule(samples, consumers, now, stalled, culprits):
    verdict = r.judge(history(*samples), consumers, now, 10)
    assert verdict.stalled is stalled, verdict
    assert verdict.culprits == culprits
    assert bool(verdict.reason) is stalled


@pytest.mark.parametrize("previous, pid, state, now, expected", [
    (None, 10, "S", 5, None),
    (None, 10, "T", 5, 5),
    ({"pid": 10, "proc_state": "T", "frozen_since": 1}, 10, "T", 5, 1),
    ({"pid": 10, "proc_state": "T", "frozen_since": 1}, 11, "T", 5, 5),     # a new process starts afresh
    ({"pid": 10, "proc_state": "T", "frozen_since": 1}, 10, "S", 5, None),  # thawed
    ({"pid": 10, "proc_state": "T", "frozen_since": 1}, None, None, 5, None),
    (None, 10, "t", 5, 5),                                                  # stopped by a tracer
])
def test_a_program_is_frozen_since_its_process_was_first_seen_stopped(previous, pid, state, now, expected):
    assert r.advance_program(previous, pid, state, now)["frozen_since"] == expected


def test_redis_answers_are_read_per_queue_with_the_messages_held_by_the_pools_queues():
    held = [json.dumps(["{}", "exports", "bulk"]), json.dumps(["{}", "celery", "celery"])]
    answer = "\n".join(["PONG", "0", "3", "1", "2", "", '{"m": 1}', '{"m": 2}', *held]) + "\n"
    samples = r.redis_samples(answer, ["celery", "exports", "bulk"],
                              r.parse_pools("celery=celery;exports=exports,bulk"))
    assert [(s.queue, s.waiting, s.held, s.head is not None) for s in samples] == [
        ("celery", 0, 1, False), ("exports", 3, 1, True), ("bulk", 1, 1, True)]


def test_a_redis_answer_cut_short_leaves_the_figures_unknown():
    samples = r.redis_samples("PONG\n3\n", ["exports"], {"exports": ["exports"]})
    assert [(s.waiting, s.held, s.head) for s in samples] == [(3, None, None)]


def test_rabbitmq_answers_give_waiting_and_the_held_messages_of_the_pools_queues():
    answer = json.dumps([{"name": "exports", "messages_ready": 3, "messages_unacknowledged": 1, "consumers": 1},
                         {"name": "bulk", "messages_ready": 0, "messages_unacknowledged": 2, "consumers": 1}])
    samples = r.rabbitmq_samples(answer, ["exports", "bulk", "celery"], {"exports": ["exports", "bulk"]})
    assert [(s.queue, s.waiting, s.held, s.head) for s in samples] == [
        ("exports", 3, 3, None), ("bulk", 0, 3, None), ("celery", 0, 0, None)]
    assert [s.waiting for s in r.rabbitmq_samples("Error: not running", ["exports"], {})] == [None]


def test_a_cluster_nodes_amqp_answer_gives_waiting_and_leaves_the_held_messages_unknown():
    # amqp_queues.py prints no messages_unacknowledged: held is unknown, never taken for 0 (free slots)
    answer = json.dumps([{"name": "exports", "messages_ready": 3, "consumers": 1}])
    samples = r.amqp_samples(answer, ["exports", "bulk"], {"exports": ["exports", "bulk"]})
    assert [(s.queue, s.waiting, s.held, s.head) for s in samples] == [("exports", 3, None, None),
                                                                        ("bulk", 0, None, None)]
    assert [s.waiting for s in r.amqp_samples("ConnectionRefusedError", ["exports"], {})] == [None]


def test_on_a_cluster_node_messages_waiting_for_long_are_no_stall_while_the_pool_runs_unfrozen(tmp_path):
    state = str(tmp_path / "stall.json")
    answer = json.dumps([{"name": "exports", "messages_ready": 3, "consumers": 1}])
    run(tmp_path, state, "100", "amqp", "exports=exports", "exports", stdin="\n@@broker\n" + answer)
    later = run(tmp_path, state, "400", "amqp", "exports=exports", "exports", stdin="\n@@broker\n" + answer)
    assert later["queues"]["exports"] == {"waiting": 3, "head": None, "head_since": None, "free_since": None}
    consumers = [r.Consumer("exports@m2", True, None)]
    assert not r.judge(later["queues"]["exports"], consumers, 400, 60).stalled
    frozen = [r.Consumer("exports@m2", True, 300)]
    assert r.judge(later["queues"]["exports"], frozen, 400, 60).culprits == ("exports@m2",)


def test_supervisor_lines_give_the_pid_of_each_running_program():
    lines = ("exports                          RUNNING   pid 412, uptime 0:01:02\n"
             "celery                           STOPPED   Dec 04 02:32 PM\n")
    assert r.supervisor_pids(lines) == {"exports": 412, "celery": None}


def run(tmp_path: Path, *args: str, stdin: str) -> dict:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", text("stall_rule.py"), *args], input=stdin,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_on_a_server_the_history_lives_in_the_state_file_between_runs(tmp_path):
    state = str(tmp_path / "stall.json")
    answer = "\n@@broker\nPONG\n3\n0\n{\"m\": 1}\n\n"
    first = run(tmp_path, state, "100", "redis", "exports=exports", "exports", stdin=answer)
    assert first["queues"]["exports"]["free_since"] == 100 and "programs" not in first
    later = run(tmp_path, state, "130", "redis", "exports=exports", "exports", stdin=answer)
    assert later["queues"]["exports"]["free_since"] == 100 and later["queues"]["exports"]["head_since"] == 100
    # a worker host without the broker: the programs' half only, the queues' half kept
    programs = run(tmp_path, state, "130", stdin="exports   RUNNING   pid 999999999, uptime 0:00:01\n")
    assert programs["programs"]["exports"] == {"pid": 999999999, "proc_state": None, "frozen_since": None}
    assert "queues" not in programs
    assert set(json.loads(Path(state).read_text())) == {"queues", "programs"}


def test_one_run_advances_the_programs_and_the_broker_queues_of_a_host_that_has_both(tmp_path):
    state = str(tmp_path / "stall.json")
    both = run(tmp_path, state, "100", "redis", "exports=exports", "exports",
               stdin="exports   RUNNING   pid 999999999, uptime 0:00:01\n@@broker\nPONG\n3\n1\nm\n\n")
    assert both["programs"]["exports"]["pid"] == 999999999 and both["queues"]["exports"]["waiting"] == 3
    assert json.loads(Path(state).read_text())["queues"]["exports"]["waiting"] == 3


@pytest.mark.parametrize("args", [[], ["state.json"], ["state.json", "-", "kafka", "p=q", "q"],
                                  ["state.json", "-", "redis"]])
def test_a_wrong_command_line_is_refused_with_its_usage(args):
    done = subprocess.run([sys.executable, "-I", "-S", "-c", text("stall_rule.py"), *args], input="",
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("usage: stall_rule.py STATE NOW")


def test_the_state_of_this_process_is_read_from_proc():
    import os
    assert r.proc_state(os.getpid()) in ("R", "S")
    assert r.proc_state(None) is None
