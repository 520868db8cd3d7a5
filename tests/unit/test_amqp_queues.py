"""tasks/scripts/amqp_queues.py: a cluster node's queues over AMQP 0-9-1 (passive queue.declare),
against a small AMQP server in a thread on loopback that answers as RabbitMQ does: Start, Tune,
OpenOk, a DeclareOk per existing queue, a Channel.Close 404 for an absent one, a Connection.Close
403 for a wrong password. (The real broker: tests/integration/test_queues_cluster.py.)"""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from tasks.scripts import amqp_queues as amqp

QUEUES = {"celery": (4, 1), "bulk": (0, 2)}      # name: (ready, consumers)


def frame(channel: int, which: tuple[int, int], args: bytes = b"") -> bytes:
    return amqp.method(channel, which, args)


class FakeBroker:
    def __init__(self, password: str = "s3cret", heartbeat_first: bool = False):
        self.password, self.heartbeat_first = password, heartbeat_first
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.seen: dict = {}
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(5)
            frames = amqp.Frames(conn)
            assert frames._take(8) == b"AMQP\x00\x00\x09\x01"
            conn.sendall(frame(0, amqp.CONNECTION_START, b"\x00\x09" + struct.pack(">I", 0)
                               + amqp.longstr(b"PLAIN AMQPLAIN") + amqp.longstr(b"en_US")))
            _, which, args = frames.next()
            assert which == amqp.CONNECTION_START_OK
            mechanism, at = amqp.read_shortstr(args, 4)
            size = struct.unpack_from(">I", args, at)[0]
            response = args[at + 4:at + 4 + size]
            self.seen["login"] = (mechanism, response.split(b"\0")[1].decode())
            if response.split(b"\0")[2].decode() != self.password:
                conn.sendall(frame(0, amqp.CONNECTION_CLOSE, struct.pack(">H", 403)
                                   + amqp.shortstr("ACCESS_REFUSED - Login was refused") + struct.pack(">HH", 10, 11)))
                return
            if self.heartbeat_first:
                conn.sendall(struct.pack(">BHI", amqp.FRAME_HEARTBEAT, 0, 0) + bytes([amqp.FRAME_END]))
            conn.sendall(frame(0, amqp.CONNECTION_TUNE, struct.pack(">HIH", 2047, 131072, 60)))
            assert frames.next()[1] == amqp.CONNECTION_TUNE_OK
            _, which, args = frames.next()
            assert which == amqp.CONNECTION_OPEN
            self.seen["vhost"] = amqp.read_shortstr(args, 0)[0]
            conn.sendall(frame(0, amqp.CONNECTION_OPEN_OK, amqp.shortstr("")))
            declared = []
            while True:
                channel, which, args = frames.next()
                if which == amqp.CHANNEL_OPEN:
                    conn.sendall(frame(channel, amqp.CHANNEL_OPEN_OK, amqp.longstr(b"")))
                elif which == amqp.QUEUE_DECLARE:
                    name, at = amqp.read_shortstr(args, 2)
                    declared.append((name, args[at] & amqp.PASSIVE))
                    if name in QUEUES:
                        conn.sendall(frame(channel, amqp.QUEUE_DECLARE_OK,
                                           amqp.shortstr(name) + struct.pack(">II", *QUEUES[name])))
                    else:
                        conn.sendall(frame(channel, amqp.CHANNEL_CLOSE, struct.pack(">H", 404)
                                           + amqp.shortstr(f"NOT_FOUND - no queue '{name}'")
                                           + struct.pack(">HH", 50, 10)))
                elif which == amqp.CHANNEL_CLOSE_OK:
                    continue
                elif which == amqp.CONNECTION_CLOSE:
                    conn.sendall(frame(0, amqp.CONNECTION_CLOSE_OK))
                    self.seen["declared"] = declared
                    return


def test_each_existing_queue_gives_its_ready_messages_and_consumers_and_an_absent_one_is_left_out():
    broker = FakeBroker()
    found = amqp.ask("127.0.0.1", broker.port, "my_proj", "my_proj", "s3cret", ["celery", "exports", "bulk"])
    broker.thread.join(5)
    assert found == [{"name": "celery", "messages_ready": 4, "consumers": 1},
                     {"name": "bulk", "messages_ready": 0, "consumers": 2}]
    assert broker.seen["login"] == ("PLAIN", "my_proj") and broker.seen["vhost"] == "my_proj"
    # passive only: nothing is created
    assert broker.seen["declared"] == [("celery", 1), ("exports", 1), ("bulk", 1)]


def test_a_heartbeat_before_the_tune_is_skipped():
    broker = FakeBroker(heartbeat_first=True)
    assert amqp.ask("127.0.0.1", broker.port, "my_proj", "my_proj", "s3cret", ["bulk"]) == [
        {"name": "bulk", "messages_ready": 0, "consumers": 2}]


def test_a_refused_login_is_an_error_that_names_the_account_and_not_the_password():
    broker = FakeBroker(password="other")
    with pytest.raises(amqp.AmqpError) as refused:
        amqp.ask("127.0.0.1", broker.port, "my_proj", "my_proj", "s3cret", ["celery"])
    assert "my_proj" in str(refused.value) and "403" in str(refused.value) and "s3cret" not in str(refused.value)


def test_main_reads_the_password_from_its_file_and_prints_the_json_list(tmp_path, capsys):
    broker = FakeBroker()
    secret = tmp_path / "broker-password"
    secret.write_text("s3cret")
    assert amqp.main(["127.0.0.1", str(broker.port), "my_proj", "my_proj", str(secret), "celery"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "celery", "messages_ready": 4, "consumers": 1}]


def test_main_says_why_when_the_node_cannot_be_asked_and_exits_1(tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    secret = tmp_path / "broker-password"
    secret.write_text("s3cret")
    assert amqp.main(["127.0.0.1", str(port), "my_proj", "my_proj", str(secret), "celery"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and f"cannot ask 127.0.0.1:{port}" in out.err and "s3cret" not in out.err
