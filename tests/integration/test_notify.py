"""The completion e-mail goes to a real SMTP conversation on loopback, and a dead relay never fails a run."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator

import pytest

from niffler.common.notify import send_completion
from niffler.testing.peers import free_port


class _Sink(socketserver.StreamRequestHandler):
    """Just enough SMTP to accept one message and keep it."""

    def handle(self) -> None:
        self.wfile.write(b"220 sink ESMTP\r\n")
        data: list[bytes] = []
        in_data = False
        for line in self.rfile:
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    self.server.messages.append(b"".join(data).decode())  # type: ignore[attr-defined]
                    self.wfile.write(b"250 queued\r\n")
                else:
                    data.append(line)
                continue
            verb = line[:4].upper()
            if verb == b"DATA":
                in_data = True
                self.wfile.write(b"354 go on\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def sink() -> Iterator[tuple[int, list[str]]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), _Sink)
    server.messages = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], server.messages  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_completion_mail_is_delivered(sink: tuple[int, list[str]]) -> None:
    port, messages = sink
    env = {
        "NIFFLER_SMTP_HOST": "127.0.0.1",
        "NIFFLER_SMTP_PORT": str(port),
        "NIFFLER_SMTP_FROM": "n@example.org",
    }
    assert send_completion("team@example.org", "niffler-png finished", "converted now: 3", environ=env)
    assert len(messages) == 1
    assert "To: team@example.org" in messages[0] and "converted now: 3" in messages[0]


def test_dead_relay_is_a_warning_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    env = {"NIFFLER_SMTP_HOST": "127.0.0.1", "NIFFLER_SMTP_PORT": str(free_port())}
    assert send_completion("team@example.org", "s", "b", environ=env, timeout=2) is False
    assert "not sent" in caplog.text
