"""The completion e-mail goes to a real SMTP conversation on loopback, and a dead relay never fails a run."""

from __future__ import annotations

import pytest

from niffler.common.notify import send_completion
from niffler.testing.peers import free_port


def test_completion_mail_is_delivered(smtp_sink: tuple[int, list[str]]) -> None:
    port, messages = smtp_sink
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
