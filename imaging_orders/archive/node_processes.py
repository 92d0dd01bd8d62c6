"""Several DICOM node processes on one port, for a machine with more than one core.

One node process answers every association in threads of one Python interpreter, so it uses about
one core however many modalities send at once (the global interpreter lock): on two cores four
storescu associations kept our node at ~1 core while the kernel, PostgreSQL and the senders had the
other. `hospital dicom --processes N` runs this process and N-1 children, each a whole node (its
own AE, database pool, study-completion and storage-commitment loops, all of which are safe to run
side by side), listening on the same port with SO_REUSEPORT so the kernel spreads new associations
across them. This process supervises: a child that exits is started again, and one that keeps
exiting at once stops the node with its exit status rather than restarting forever. SIGTERM or
SIGINT stops the children, then this process's own node.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from flask import Flask
from flask.cli import ScriptInfo

from imaging_orders.archive.dicom_server import start_dicom_server, wait_for_stop_signal

logger = logging.getLogger(__name__)

# A child that exits this soon after starting has a problem restarting will not fix.
QUICK_EXIT_SECONDS = 10.0
QUICK_EXITS_BEFORE_GIVING_UP = 3
STOP_TIMEOUT_SECONDS = 30.0


class NodeProcessesFailed(RuntimeError):
    """Node processes kept exiting as soon as they started."""


@dataclass(frozen=True)
class NodeAddress:
    host: str
    port: int
    ae_title: str | None


def run_child_node(app_import_path: str, address: NodeAddress) -> None:
    """A child's whole life: load the app as the parent's `flask` command did (same import path,
    same environment), then run a node on the shared port until SIGTERM."""
    app = ScriptInfo(app_import_path=app_import_path).load_app()
    with app.app_context():
        start_dicom_server(app, host=address.host, port=address.port, ae_title=address.ae_title, block=True,
                           share_port=True)


@dataclass
class _Children:
    app_import_path: str
    address: NodeAddress
    running: list[tuple[BaseProcess, float]] = field(default_factory=list)
    quick_exits: int = 0

    def start_one(self) -> None:
        # Spawned, not forked: the parent holds threads, sockets and a database pool.
        context = multiprocessing.get_context("spawn")
        child = context.Process(target=run_child_node, args=(self.app_import_path, self.address),
                                name="dicom-node", daemon=False)
        child.start()
        self.running.append((child, time.monotonic()))
        logger.info("DICOM node process %s started on port %d", child.pid, self.address.port)

    def replace_exited(self) -> None:
        for child, started in list(self.running):
            if child.is_alive():
                continue
            self.running.remove((child, started))
            lived = time.monotonic() - started
            logger.error("DICOM node process %s exited with status %s after %.0f s", child.pid, child.exitcode, lived)
            if lived < QUICK_EXIT_SECONDS:
                self.quick_exits += 1
                if self.quick_exits >= QUICK_EXITS_BEFORE_GIVING_UP:
                    raise NodeProcessesFailed(
                        f"DICOM node processes exited {self.quick_exits} times within {QUICK_EXIT_SECONDS:.0f} s "
                        f"of starting (last status {child.exitcode}); see their log lines"
                    )
            else:
                self.quick_exits = 0
            self.start_one()

    def stop_all(self) -> None:
        for child, _ in self.running:
            child.terminate()  # SIGTERM: the child's node shuts down as a single node does
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child, _ in self.running:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                logger.warning("DICOM node process %s did not stop in time; killing it", child.pid)
                child.kill()
                child.join(5)
        self.running.clear()


def run_node_processes(app: Flask, processes: int, *, app_import_path: str, host: str | None = None,
                       port: int | None = None, ae_title: str | None = None) -> None:
    """Run `processes` node processes on one port until SIGTERM or SIGINT (see the module's text)."""
    server = start_dicom_server(app, host=host, port=port, ae_title=ae_title, block=False, share_port=True)
    assert server is not None  # block=False returns the server
    bound_host, bound_port = server.server_address[:2]
    children = _Children(app_import_path, NodeAddress(str(bound_host), int(bound_port), ae_title))
    try:
        for _ in range(processes - 1):
            children.start_one()
        wait_for_stop_signal(every_second=children.replace_exited)
    finally:
        logger.info("DICOM node processes stopping")
        children.stop_all()
        server.shutdown()
