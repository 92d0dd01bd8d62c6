"""The multi-host layout of deploy/MULTIHOST.md, on one machine, under load and chaos.

Twelve hosts (network namespaces, tests/chaos/hosts.py): db1 (PostgreSQL primary) and db2 (its
synchronous streaming standby); redis1 (master), redis2 (replica), redis3, each of the three also
running a Sentinel; web1 and web2 (gunicorn), ai1 and ai2 (`hospital worker` for the ai queue and
one for billing, notify and default), dicom1 and dicom2 (`hospital dicom`), and lb (HAProxy: HTTP
to web1/web2, health-checked on /readyz; TCP to dicom1/dicom2 for the modalities). Every process
finds PostgreSQL by a libpq multi-host URL and Redis through the sentinels; the DICOM store is a
directory every host sees, as a shared volume would be.

`run_chaos` drives the load client of tests/chaos/load_client.py through the balancer and, while
it runs, powers off web1 and ai1 (every process on them SIGKILLed), SIGKILLs the Redis master (the
sentinels promote the replica) and the PostgreSQL primary (the standby is promoted, as an operator
or failover manager would); then waits for the work to drain and reconciles. Used by
tests/chaos/test_multihost.py and bench/multihost.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.closed_loop import wait_for_dicom
from hospital.app import create_app
from hospital.db import get_db
from hospital.migrate import upgrade
from hospital.seed import DEMO_PASSWORD, seed_demo
from tests.chaos.hosts import Hosts
from tests.chaos.load_client import AE_TITLE, Stats, client_loop, percentile, reconcile
from tests.chaos.processes import (
    OwnPostgres,
    SentinelRedis,
    hospital_env,
    kill_hard,
    multi_host_url,
    start_worker,
    wait_until,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HOST_NAMES = ["db1", "db2", "redis1", "redis2", "redis3", "web1", "web2", "ai1", "ai2", "dicom1", "dicom2", "lb"]
WEB_PORT, LB_HTTP_PORT, DICOM_PORT = 8000, 8080, 11112
# Short enough that work a dead AI node held is handed on within the run, long enough for an analysis.
JOB_SETTINGS = {"JOB_TIMEOUT_SECONDS": "30", "JOB_SWEEP_SECONDS": "2", "JOB_SWEEP_AFTER_SECONDS": "5"}


def haproxy_config(hosts: Hosts) -> str:
    """HTTP to the web nodes, checked on /readyz (a node whose database or Redis fails its check is
    taken out, and put back when it passes); TCP to the DICOM nodes. A connection a dead node
    refuses is tried on the other (`option redispatch`): nothing was sent, so nothing is done twice;
    a request already sent is never re-sent, since a POST may have taken effect."""
    ip = hosts.ip
    return f"""global
    maxconn 4096
defaults
    timeout connect 2s
    timeout check 3s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch
frontend http
    mode http
    bind {ip['lb']}:{LB_HTTP_PORT}
    option forwardfor
    default_backend web
backend web
    mode http
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
    server web1 {ip['web1']}:{WEB_PORT} check
    server web2 {ip['web2']}:{WEB_PORT} check
frontend dicom
    mode tcp
    bind {ip['lb']}:{DICOM_PORT}
    default_backend dicom
backend dicom
    mode tcp
    balance leastconn
    default-server inter 1s fall 2 rise 2
    server dicom1 {ip['dicom1']}:{DICOM_PORT} check
    server dicom2 {ip['dicom2']}:{DICOM_PORT} check
"""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def signs_in(base: str) -> bool:
    """A sign-in through the balancer succeeds (it writes a token: the database takes writes)."""
    request = urllib.request.Request(f"{base}/api/auth/token", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": "patient", "password": DEMO_PASSWORD}).encode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(200 <= response.status < 300)
    except OSError:
        return False


@dataclass
class Cluster:
    """The running layout; `with Cluster(...) as cluster:` starts it all and tears it all down."""

    work: Path | None = None  # logs and the shared DICOM store; none given: a temporary one, removed after
    hosts: Hosts = field(default_factory=lambda: Hosts(HOST_NAMES))
    primary: OwnPostgres | None = None
    standby: OwnPostgres | None = None
    redis: SentinelRedis | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ids: dict[str, Any] = field(default_factory=dict)
    _exit: ExitStack = field(default_factory=ExitStack)

    @property
    def database_url(self) -> str:
        assert self.primary is not None and self.standby is not None
        return multi_host_url(self.primary, self.standby)

    @property
    def base_url(self) -> str:
        return f"http://{self.hosts.ip['lb']}:{LB_HTTP_PORT}"

    @property
    def dir(self) -> Path:
        assert self.work is not None, "the cluster is not started"
        return self.work

    def __enter__(self) -> Cluster:
        if self.work is None:
            self.work = Path(tempfile.mkdtemp(prefix="chaos-multihost-"))
            self._exit.callback(shutil.rmtree, self.dir, True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._exit.callback(self.hosts.down)  # last out: whatever else failed, no namespace is left
        try:
            self.hosts.up()
            self._start_databases()
            self._start_redis()
            self._seed()
            self._start_nodes()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            kill_hard(process)  # throwaway nodes: the namespaces go next, with whatever is left in them
        self._exit.close()

    def _on(self, name: str) -> tuple[str, str]:
        return self.hosts.ip[name], self.hosts.netns(name)

    def _start_databases(self) -> None:
        primary = self.primary = OwnPostgres(host=self.hosts.ip["db1"], netns=self.hosts.netns("db1"))
        self._exit.callback(primary.destroy)
        primary.init()
        primary.trust_network(self.hosts.cidr)
        primary.start()
        upgrade(primary.url)
        host, netns = self._on("db2")
        self.standby = primary.start_standby(host, netns)
        self._exit.callback(self.standby.destroy)
        primary.require_synchronous_standby()

    def _start_redis(self) -> None:
        self.redis = SentinelRedis(hosts=[self._on("redis1"), self._on("redis2"), self._on("redis1"),
                                          self._on("redis2"), self._on("redis3")])
        self._exit.callback(self.redis.stop)
        self.redis.start()

    def _seed(self) -> None:
        assert self.redis is not None
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.env = hospital_env(
            self.database_url, "", self.dir / "dicom", self.dir, REDIS_SENTINELS=self.redis.addresses,
            REDIS_SENTINEL_MASTER=self.redis.name, STUDY_QUIET_SECONDS="2", LOGIN_ATTEMPTS_PER_MINUTE="100000",
            FORWARDED_ALLOW_IPS=self.hosts.ip["lb"], LOG_LEVEL="WARNING", **JOB_SETTINGS)
        app = create_app({"DATABASE_URL": self.database_url, "REDIS_URL": None, "REDIS_SENTINELS": self.redis.addresses,
                          "REDIS_SENTINEL_MASTER": self.redis.name, "INSTANCE_DIR": self.dir,
                          "DICOM_STORAGE_DIR": self.dir / "dicom", "SECRET_KEY": "test-secret"})
        with app.app_context(), get_db(app).transaction() as session:
            seed = seed_demo(session, app)
            self.ids = {"patient": seed.patient.id, "centre": seed.imaging_centre.id, "mrn": seed.patient.mrn,
                        "name": seed.patient.dicom_name}
        get_db(app).engine.dispose()

    def _spawn(self, name: str, host: str, args: list[str], **env: str) -> None:
        log = open(self.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self._exit.callback(log.close)
        self.processes[name] = subprocess.Popen([*self.hosts.prefix(host), *args], env={**self.env, **env}, cwd=ROOT,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_nodes(self) -> None:
        ip = self.hosts.ip
        for web in ("web1", "web2"):
            self._spawn(web, web, [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
                                   "hospital.wsgi:app"], WEB_BIND=f"{ip[web]}:{WEB_PORT}", WEB_WORKERS="1",
                        WEB_THREADS="4")
        for dicom in ("dicom1", "dicom2"):
            self._spawn(dicom, dicom, [sys.executable, "-m", "hospital.cli", "dicom", "--host", ip[dicom],
                                       "--port", str(DICOM_PORT), "--ae-title", AE_TITLE])
        for ai in ("ai1", "ai2"):
            self.processes[f"{ai}-ai"] = start_worker(self.env, "ai", log=self.dir / "logs" / f"{ai}-ai.log",
                                                      on_host=self.hosts.prefix(ai))
            self.processes[f"{ai}-other"] = start_worker(self.env, "billing", "notify", "default",
                                                         log=self.dir / "logs" / f"{ai}-other.log",
                                                         on_host=self.hosts.prefix(ai))
        config = self.dir / "haproxy.cfg"
        config.write_text(haproxy_config(self.hosts))
        self._spawn("lb", "lb", ["haproxy", "-f", str(config), "-db"])
        for web in ("web1", "web2"):
            wait_until(f"{web} ready", lambda web=web: answers(f"http://{ip[web]}:{WEB_PORT}/readyz"), 120, 0.5)
        wait_until("the balancer", lambda: answers(f"{self.base_url}/readyz"), 30, 0.5)
        for dicom in ("dicom1", "dicom2"):
            wait_for_dicom(ip[dicom], DICOM_PORT, AE_TITLE, server=self.processes[dicom])
        wait_for_dicom(ip["lb"], DICOM_PORT, AE_TITLE)

    def logs_tail(self, lines: int = 15) -> str:
        """The end of every node's log, for a failure message."""
        out = []
        for log in sorted((self.dir / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(line[:300] for line in tail))
        return "\n".join(out)


def run_chaos(cluster: Cluster, *, duration: float = 75, clients: int = 2, slices: int = 8, think_seconds: float = 2.0,
              drain_timeout: float = 120) -> dict[str, Any]:
    """Load through the balancer with the four failures during it; then drain and reconcile.
    Returns the run's numbers (see bench/multihost.py for how they are recorded)."""
    assert cluster.primary is not None and cluster.standby is not None and cluster.redis is not None
    stats = Stats()
    failover: dict[str, float] = {}
    lb, ip = cluster.base_url, cluster.hosts.ip
    started = time.monotonic()
    deadline = started + duration

    def at(fraction: float) -> None:
        time.sleep(max(0.0, started + duration * fraction - time.monotonic()))

    def event(text: str) -> None:
        stats.events.append(f"t={time.monotonic() - started:.0f}s {text}")
        logger.info("chaos: %s", text)

    def chaos() -> None:
        at(0.15)
        killed = cluster.hosts.kill("web1")
        event(f"web1 powered off ({killed} processes SIGKILLed)")
        at(0.3)
        killed = cluster.hosts.kill("ai1")
        event(f"ai1 powered off ({killed} processes SIGKILLed, work horses included)")
        at(0.45)
        assert cluster.redis is not None
        failover["redis_promoted_s"] = round(cluster.redis.kill_master(), 1)
        event(f"Redis master SIGKILLed; the sentinels promoted the replica in {failover['redis_promoted_s']} s")
        at(0.6)
        assert cluster.primary is not None and cluster.standby is not None
        killed_at = time.monotonic()
        cluster.primary.kill_hard()
        failover["postgres_promoted_s"] = round(time.monotonic() - killed_at + cluster.standby.promote(), 1)
        wait_until("a write through the balancer", lambda: signs_in(lb), 60, 0.2)
        failover["postgres_serving_again_s"] = round(time.monotonic() - killed_at, 1)
        event(f"PostgreSQL primary SIGKILLed (postmaster and backends); standby promoted after "
              f"{failover['postgres_promoted_s']} s, a write through the balancer succeeded after "
              f"{failover['postgres_serving_again_s']} s")

    threads = [threading.Thread(target=client_loop, args=(lb, DICOM_PORT, cluster.ids, deadline, stats, cluster.dir,
                                                          slices, i), kwargs={"dicom_host": ip["lb"], "think_seconds": think_seconds},
                                daemon=True)
               for i in range(clients)]
    chaos_errors: list[BaseException] = []

    def guarded_chaos() -> None:
        try:
            chaos()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            chaos_errors.append(exc)

    chaos_thread = threading.Thread(target=guarded_chaos, daemon=True)
    for thread in [*threads, chaos_thread]:
        thread.start()
    for thread in threads:
        thread.join(duration + 120)
    chaos_thread.join(60)
    if chaos_errors:
        raise RuntimeError(f"the chaos itself failed: {chaos_errors[0]!r}") from chaos_errors[0]
    load_seconds = time.monotonic() - started

    def drained() -> dict[str, Any] | None:
        result = reconcile(cluster.database_url, stats.accessions_sent, stats.audited)
        open_jobs = result["jobs"].get("queued", 0) + result["jobs"].get("running", 0)
        done = result["studies_with_one_report_and_charges"] == result["studies_received"] and open_jobs == 0
        return result if done else None

    drain_started = time.monotonic()
    try:
        result = wait_until("the work to drain", drained, drain_timeout, 2)
    except TimeoutError:
        stats.events.append("drain timed out")
        result = reconcile(cluster.database_url, stats.accessions_sent, stats.audited)
    api = [v for name, values in stats.latencies.items() if name not in ("C-STORE study", "login") for v in values]
    return {
        "duration_s": round(load_seconds), "clients": clients, "slices": slices, "think_s": think_seconds,
        "requests": stats.requests,
        "http_failures_5xx_or_io": sum(1 for f in stats.failures if not f.startswith("C-STORE")),
        "cstore_failures": sum(1 for f in stats.failures if f.startswith("C-STORE")),
        "studies_acknowledged": len(stats.accessions_sent), "instances_acknowledged": stats.instances_sent,
        "p50_ms": round(statistics.median(api) * 1000, 1) if api else 0.0,
        "p99_ms": round(percentile(api, 0.99) * 1000, 1),
        "cstore_p50_ms": round(statistics.median(stats.latencies.get("C-STORE study", [0])) * 1000),
        "drain_s": round(time.monotonic() - drain_started), "failover": failover, "chaos": stats.events,
        "reconciliation": result, "failures_sample": stats.failures[:10],
    }
