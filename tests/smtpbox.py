"""A local SMTP server (aiosmtpd) for the notification tests: Airflow mails it over real SMTP."""

from __future__ import annotations

import email
import socket
import time
from contextlib import contextmanager
from email.message import Message
from email.policy import default


class Inbox:
    """Every message the server received, parsed; ``env()`` points Airflow's notifiers at the server."""

    def __init__(self, port: int):
        self.port = port
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's handler hook
        self.messages.append(email.message_from_bytes(envelope.content, policy=default))
        return "250 Message accepted for delivery"

    def env(self, to: str = "risk-team@example.com") -> dict[str, str]:
        return {"PIPELINE_NOTIFY_EMAIL": to, "PIPELINE_NOTIFY_FROM": "fraud-pipeline@example.com",
                "AIRFLOW_CONN_SMTP_DEFAULT": f"smtp://127.0.0.1:{self.port}?disable_ssl=true&disable_tls=true"}

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]

    def body(self, subject_part: str) -> str:
        for m in self.messages:
            if subject_part in str(m["Subject"]):
                part = m.get_body(preferencelist=("html", "plain"))
                return part.get_content() if part is not None else ""
        raise AssertionError(f"no message with {subject_part!r} in its subject; got {self.subjects()}")

    def wait_for(self, subject_part: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(subject_part in s for s in self.subjects()):
                return self.body(subject_part)
            time.sleep(1)
        raise AssertionError(f"no message with {subject_part!r} within {timeout:.0f} s; got {self.subjects()}")


@contextmanager
def smtp_inbox():
    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox(port)
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
