"""The optional completion e-mail (upstream's SendEmail / YourEmail), through smtplib.

Upstream shelled out to ``mail``. Here the message goes to an SMTP relay
named by ``$NIFFLER_SMTP_HOST`` (default ``localhost``) and
``$NIFFLER_SMTP_PORT`` (default 25), from ``$NIFFLER_SMTP_FROM`` (default
``niffler@<hostname>``). Messages carry counts, never PHI. A mail that can't
be sent is logged as a warning: the run's result does not depend on it.
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
from collections.abc import Mapping
from email.message import EmailMessage

__all__ = ["send_completion"]

log = logging.getLogger(__name__)


def send_completion(
    to: str, subject: str, body: str, environ: Mapping[str, str] | None = None, timeout: float = 20.0
) -> bool:
    """Send one plain-text e-mail; return whether the relay accepted it."""
    env = os.environ if environ is None else environ
    host = env.get("NIFFLER_SMTP_HOST", "localhost")
    try:
        port = int(env.get("NIFFLER_SMTP_PORT", "25"))
    except ValueError:
        log.warning("NIFFLER_SMTP_PORT is not a number; completion e-mail not sent")
        return False
    message = EmailMessage()
    message["From"] = env.get("NIFFLER_SMTP_FROM", f"niffler@{socket.gethostname()}")
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("completion e-mail to %s via %s:%d not sent: %s", to, host, port, exc)
        return False
    log.info("completion e-mail sent to %s", to)
    return True
