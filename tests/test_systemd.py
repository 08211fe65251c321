"""sd_notify over a real unix datagram socket, as systemd would receive it."""

import socket

from kiosk.door.systemd import Notifier


def test_messages_reach_the_notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(1)
        notifier = Notifier(address=path, min_interval_s=1.0)
        notifier.ready(status="door scanning")
        notifier.ready()  # only once
        notifier.watchdog(now_ns=0)
        notifier.watchdog(now_ns=500_000_000)  # rate-limited: within a second
        notifier.watchdog(now_ns=1_000_000_000)
        notifier.stopping()
        received = [server.recv(1024).decode() for _ in range(4)]
    assert received == ["READY=1\nSTATUS=door scanning", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]


def test_without_systemd_nothing_is_sent_and_nothing_fails(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    assert list(notifier.sent) == ["READY=1", "WATCHDOG=1"]


def test_a_vanished_socket_never_breaks_the_door(tmp_path):
    notifier = Notifier(address=str(tmp_path / "gone"))
    notifier.watchdog(now_ns=0)  # connect fails: swallowed
    assert list(notifier.sent) == ["WATCHDOG=1"]


def test_the_record_of_sent_messages_stays_bounded():
    notifier = Notifier(address="", min_interval_s=0)
    for second in range(10_000):
        notifier.watchdog(now_ns=second * 1_000_000_000)
    assert len(notifier.sent) == 64
