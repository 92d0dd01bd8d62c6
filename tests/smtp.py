"""A real SMTP server for the tests (aiosmtpd, on a free local port) and the app's notifier pointed
at it: what the app mails arrives here as parsed messages, exactly as a mail client would read them."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask

from hospital.notify import SmtpNotifier

SENDER = "Imaging Hospital <no-reply@hospital.test>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Mailbox:
    """What the server received: each message parsed, with its raw bytes and envelope recipients."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    envelopes: list[list[str]] = field(default_factory=list)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m, rcpts in zip(self.messages, self.envelopes, strict=True) if address in rcpts]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        content: bytes = envelope.original_content or envelope.content
        self.raw.append(content)
        self.messages.append(email.message_from_bytes(content, policy=email.policy.default))  # type: ignore[arg-type]
        self.envelopes.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture()
def smtp_server() -> Iterator[Mailbox]:
    mailbox = Mailbox(port=free_port())
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port)
    controller.start()
    yield mailbox
    controller.stop()


@pytest.fixture()
def mail_through(app: Flask) -> Iterator[Any]:
    """`mail_through(port)` points the app's notifier at an SMTP server on `port` (one that may not
    be listening); the app's own notifier is put back afterwards."""
    original = app.extensions["hospital.notifier"]

    def point(port: int) -> SmtpNotifier:
        smtp = SmtpNotifier("127.0.0.1", port, SENDER, timeout=5)
        app.extensions["hospital.notifier"] = smtp
        return smtp

    yield point
    app.extensions["hospital.notifier"] = original
