"""MLLP (HL7's Minimal Lower Layer Protocol): the framing, the listener `hospital hl7` runs, and
the sender results go out with.

A message travels as <VT> message <FS><CR>. The listener reads frames off each connection and
answers each with the ACK `receive_message` returns, in order. It never holds more than
`HL7_MAX_MESSAGE_BYTES` of one message: the rest of an oversized frame is read and dropped, and the
message is answered AR and kept truncated. Bytes outside a frame are skipped; a connection idle for
`HL7_IDLE_TIMEOUT_SECONDS` is closed.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Iterator

from flask import Flask

from integration.hl7_codec import APPLICATION_INTERNAL_ERROR, build_ack, read_header
from integration.hl7_inbound import receive_message

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK


class FrameReader:
    """Frames from a socket: yields (payload, truncated) per frame, payload cut at `limit` bytes."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock = sock
        self.limit = limit
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def frames(self) -> Iterator[tuple[bytes, bool]]:
        while True:
            start = self.buffer.find(START_BLOCK)
            if start < 0:
                self.buffer = b""  # noise between frames
                if not self._fill():
                    return
                continue
            self.buffer = self.buffer[start + 1:]
            payload, truncated = b"", False
            while True:
                end = self.buffer.find(END_BLOCK)
                if end >= 0:
                    part, self.buffer = self.buffer[:end], self.buffer[end + len(END_BLOCK):]
                    break
                # Keep the last byte: it may be the FS of an END_BLOCK split across reads.
                part, self.buffer = self.buffer[:-1], self.buffer[-1:]
                if not truncated:
                    payload += part
                    if len(payload) > self.limit:
                        payload, truncated = payload[: self.limit], True
                if not self._fill():
                    return  # the peer left mid-frame: nothing to answer
                continue
            if not truncated:
                payload += part
                if len(payload) > self.limit:
                    payload, truncated = payload[: self.limit], True
            yield payload, truncated


class _Handler(socketserver.BaseRequestHandler):
    server: Hl7Listener

    def handle(self) -> None:
        app = self.server.app
        self.request.settimeout(float(app.config["HL7_IDLE_TIMEOUT_SECONDS"]))
        reader = FrameReader(self.request, int(app.config["HL7_MAX_MESSAGE_BYTES"]))
        try:
            for payload, truncated in reader.frames():
                self.request.sendall(frame(self._answer(app, payload, truncated)))
        except (TimeoutError, ConnectionError) as exc:
            logger.info("HL7 connection from %s closed: %s", self.client_address[0], exc)

    @staticmethod
    def _answer(app: Flask, payload: bytes, truncated: bool) -> bytes:
        try:
            with app.app_context():
                return receive_message(app, payload, truncated=truncated)
        except Exception:  # noqa: BLE001 - nothing was kept; the sender's retry is the recovery
            logger.exception("HL7 message could not be processed; answered AE so the sender retries")
            header = read_header(payload.decode("utf-8", errors="replace").replace("\n", "\r"))
            return build_ack(header, "AE", application=app.config["HL7_APPLICATION"],
                             facility=app.config["HL7_FACILITY"],
                             text="internal error; nothing was stored; send the message again",
                             error_code=APPLICATION_INTERNAL_ERROR)


class Hl7Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: Flask, address: tuple[str, int]) -> None:
        self.app = app
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start_hl7_listener(app: Flask, *, host: str | None = None, port: int | None = None,
                       block: bool = True) -> Hl7Listener:
    """Listen for HL7 over MLLP; `block=False` serves from a background thread (tests, demo)."""
    listener = Hl7Listener(app, (host or app.config["HL7_HOST"], app.config["HL7_PORT"] if port is None else port))
    logger.info("HL7 MLLP listener on %s:%s", *listener.server_address[:2])
    if block:
        try:
            listener.serve_forever()
        finally:
            listener.server_close()
    else:
        threading.Thread(target=listener.serve_forever, name="hl7-listener", daemon=True).start()
    return listener


class NotAcknowledged(Exception):
    """A destination did not answer a message with AA/CA (or did not answer at all)."""


def send_message(host: str, port: int, message: bytes, *, timeout: float) -> bytes:
    """Send one framed message and return the acknowledgement's payload."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(frame(message))
            for payload, _truncated in FrameReader(sock, 1024 * 1024).frames():
                return payload
    except OSError as exc:
        raise NotAcknowledged(f"{host}:{port}: {exc}") from exc
    raise NotAcknowledged(f"{host}:{port} closed the connection without an acknowledgement")
