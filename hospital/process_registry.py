"""Which code versions are running: every long-lived process says in Redis which schema head its
code was written for, so that `hospital db upgrade` can refuse a destructive (contract) migration
while code that still needs the old shape is running (docs/operations.md, "Upgrading without
downtime").

Two kinds of registration, both in the Redis the jobs use:

- RQ workers register themselves (RQ's own worker registry, with its own heartbeat and expiry);
  `hospital worker` names each one `hospital-<schema head>-<random>`, so the name carries the
  version. A worker whose name does not (one started by a release before this module, or by hand)
  is of unknown version, and an unknown version counts as old: refusing is the safe mistake.
- The web and DICOM processes set a key `hospital:process:<kind>:<host>:<pid>` holding their schema
  head, renewed by a `Heartbeat` thread and expiring when the process stops renewing it (crashed,
  killed), so a dead process does not block upgrades for longer than `PROCESS_TTL_SECONDS`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from functools import cache

from alembic.config import Config
from alembic.script import ScriptDirectory
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker

from hospital.config import PROJECT_ROOT

logger = logging.getLogger(__name__)

KEY_PREFIX = "hospital:process:"
WORKER_NAME_PREFIX = "hospital-"
PROCESS_TTL_SECONDS = 60


@cache
def code_schema_head() -> str:
    """The newest migration this code ships (the schema it was written for)."""
    config = Config()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    heads = ScriptDirectory.from_config(config).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations must have one head, found {sorted(heads)}")
    return heads[0]


@dataclass(frozen=True)
class RunningProcess:
    """A registered process: `schema_head` is None when its version cannot be told."""

    kind: str  # "worker", "web", "dicom", ...
    name: str
    schema_head: str | None


def worker_name(schema_head: str | None = None) -> str:
    """An RQ worker name that carries the code's schema head."""
    return f"{WORKER_NAME_PREFIX}{schema_head or code_schema_head()}-{uuid.uuid4().hex[:12]}"


def _head_from_worker_name(name: str) -> str | None:
    if not name.startswith(WORKER_NAME_PREFIX):
        return None
    head, sep, _suffix = name[len(WORKER_NAME_PREFIX):].rpartition("-")
    return head if sep and head else None


def _process_key(kind: str) -> str:
    return f"{KEY_PREFIX}{kind}:{socket.gethostname()}:{os.getpid()}"


def register_process(conn: Redis, kind: str, *, schema_head: str | None = None,
                     ttl_seconds: int = PROCESS_TTL_SECONDS) -> str:
    """Register (or renew) this process; returns its key."""
    key = _process_key(kind)
    conn.set(key, json.dumps({"kind": kind, "schema_head": schema_head or code_schema_head(),
                              "host": socket.gethostname(), "pid": os.getpid()}), ex=ttl_seconds)
    return key


def running_processes(conn: Redis) -> list[RunningProcess]:
    """Every live RQ worker and registered web/DICOM process, with the schema head it was written for."""
    found = [RunningProcess("worker", worker.name, _head_from_worker_name(worker.name))
             for worker in Worker.all(connection=conn)]
    for key in conn.scan_iter(match=f"{KEY_PREFIX}*"):
        raw = conn.get(key)
        if raw is None:  # expired between the scan and the read
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        try:
            data = json.loads(raw)
            found.append(RunningProcess(str(data.get("kind") or "process"), name, data.get("schema_head") or None))
        except (ValueError, AttributeError):
            found.append(RunningProcess("process", name, None))
    return found


class Heartbeat:
    """Keeps this process registered while it runs (a daemon thread renewing the key), and removes
    the registration when stopped."""

    def __init__(self, conn: Redis, kind: str, *, ttl_seconds: int = PROCESS_TTL_SECONDS) -> None:
        self.conn = conn
        self.kind = kind
        self.ttl_seconds = ttl_seconds
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.key = _process_key(kind)

    def start(self) -> None:
        register_process(self.conn, self.kind, ttl_seconds=self.ttl_seconds)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.kind}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.ttl_seconds / 3):
            try:
                register_process(self.conn, self.kind, ttl_seconds=self.ttl_seconds)
            except RedisError:
                # Redis away for a moment: the key expires and comes back on the next beat.
                logger.warning("could not renew the %s process registration", self.kind)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.conn.delete(self.key)
        except RedisError:
            logger.warning("could not remove the %s process registration", self.kind)
