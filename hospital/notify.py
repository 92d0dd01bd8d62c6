"""Outgoing messages to patients and staff (email, SMS) behind one small interface.

`SmtpNotifier` hands mail to the SMTP server configured with `SMTP_HOST` (hospital/config.py);
without one, `LogNotifier` records that a message was due without putting its content (PHI) in the
log (the demo, a laptop). There is no SMS gateway: an SMS is logged the same way by either.

Sending is a network call that fails (the server is down, refuses the sender): the notifier raises
`MailNotSent`, and the job that called it fails and is retried (hospital/notifications.py keeps a
mail owed until a server took it). Callers send from jobs, after the causing transaction committed,
never inside a request.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

from flask import Flask, current_app

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    channel: str  # "email" or "sms"
    recipient: str
    subject: str
    body: str


class Notifier(Protocol):
    def send(self, message: OutgoingMessage) -> None: ...


class MailNotSent(RuntimeError):
    """The SMTP server could not be reached or refused the message; sending again later may work."""


def recipient_hint(recipient: str) -> str:
    """Enough of an address to tell log lines apart, not enough to name anyone."""
    return recipient[:2] + "***" if recipient else "(none)"


class LogNotifier:
    """Sends nothing; logs the channel and a recipient hint only."""

    def send(self, message: OutgoingMessage) -> None:
        logger.info("notification via %s to %s (%d characters)", message.channel, recipient_hint(message.recipient),
                    len(message.body))


def is_mail_address(recipient: str) -> bool:
    """Whether `recipient` parses as one addr-spec (local@domain), the only thing handed to SMTP."""
    try:
        address = Address(addr_spec=recipient.strip())
    except (ValueError, IndexError):
        return False
    return bool(address.username and address.domain and "." in address.domain.strip("."))


class SmtpNotifier:
    """Mail through an SMTP server: plain text, UTF-8 (a Chinese subject is RFC 2047 encoded by the
    `email` package's default policy), one connection per message.

    A connection per message is slower than a pooled one but has no state to go stale between jobs
    in a forked worker. Messages for a channel other than email, or for a recipient that is not an
    address (a username, a phone number), are logged and not sent.
    """

    def __init__(self, host: str, port: int, sender: str, *, username: str | None = None,
                 password: str | None = None, starttls: bool = False, timeout: float = 30) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SmtpNotifier:
        return cls(str(config["SMTP_HOST"]), int(config["SMTP_PORT"]), str(config["SMTP_FROM"]),
                   username=config.get("SMTP_USERNAME"), password=config.get("SMTP_PASSWORD"),
                   starttls=bool(config.get("SMTP_STARTTLS")), timeout=float(config.get("SMTP_TIMEOUT_SECONDS", 30)))

    def compose(self, message: OutgoingMessage) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = message.recipient.strip()
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2].strip(">") or None)
        mail.set_content(message.body)
        return mail

    def send(self, message: OutgoingMessage) -> None:
        if message.channel != "email" or not is_mail_address(message.recipient):
            logger.info("not mailed: %s to %s is not an email address", message.channel,
                        recipient_hint(message.recipient))
            return
        mail = self.compose(message)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailNotSent(f"SMTP server {self.host}:{self.port} did not take the mail: "
                              f"{type(exc).__name__}: {exc}") from exc
        logger.info("mailed %s via %s:%s", recipient_hint(message.recipient), self.host, self.port)


def init_app(app: Flask) -> None:
    if "hospital.notifier" in app.extensions:
        return
    if app.config.get("SMTP_HOST"):
        app.extensions["hospital.notifier"] = SmtpNotifier.from_config(app.config)
    else:
        app.extensions["hospital.notifier"] = LogNotifier()


def notifier() -> Notifier:
    configured: Notifier = current_app.extensions["hospital.notifier"]
    return configured
