"""Outgoing messages to patients and staff (email, SMS) behind one small interface.

The demo and tests use `LogNotifier`, which records that a message was sent without putting its
content (PHI) in the log. A real deployment plugs in an email or SMS gateway with the same method.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

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


class LogNotifier:
    """Sends nothing; logs the channel and a recipient hint only."""

    def send(self, message: OutgoingMessage) -> None:
        hint = message.recipient[:2] + "***" if message.recipient else "(none)"
        logger.info("notification via %s to %s (%d characters)", message.channel, hint, len(message.body))


def init_app(app: Flask) -> None:
    app.extensions.setdefault("hospital.notifier", LogNotifier())


def notifier() -> Notifier:
    configured: Notifier = current_app.extensions["hospital.notifier"]
    return configured
