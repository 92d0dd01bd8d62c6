"""gunicorn settings for `gunicorn -c deploy/gunicorn.conf.py 'hospital.wsgi:app'`.

Stateless workers: sessions are signed cookies and bearer tokens live in PostgreSQL, so any
worker on any machine can answer any request (no sticky sessions). Tune with the environment.
"""

import multiprocessing
import os

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
# Threads overlap database waits; processes use the cores. (2 x cores) + 1 is gunicorn's own advice.
workers = int(os.environ.get("WEB_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("WEB_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak cannot grow forever, but rarely: a worker's start
# costs about 4 s of CPU (importing and building the app), so recycling every 2,000 requests spent
# a fifth of a core per worker at 200 requests a second, and stalled requests while it happened
# (issue #18). 0 switches recycling off.
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "100000"))
max_requests_jitter = max_requests // 10
# Each worker opens its own pool after the fork (a connection idle for 2 s is pinged before use, and
# a disconnect drops the whole pool: hospital.db.ping_idle_connections).
preload_app = False
accesslog = "-"
errorlog = "-"
# No query strings in the access log: they can carry identifiers (accession, MRN searches).
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Production is served behind HTTPS (TLS ends at the proxy): the session cookie must never travel
# over plain HTTP. The workers import the app after this file runs, so they read it from the
# environment; set SESSION_COOKIE_SECURE=false only for a deliberate plain-HTTP test install.
os.environ.setdefault("SESSION_COOKIE_SECURE", "true")
# The documented setup has one reverse proxy (TLS ends there): take the client's address from its
# X-Forwarded-For, or every client shares the proxy's address and one login rate bucket. Set it to
# the number of proxies that append to X-Forwarded-For (0 when gunicorn faces clients directly).
os.environ.setdefault("TRUSTED_PROXIES", "1")
# One JSON object per log line (with the request id), for a log shipper.
os.environ.setdefault("LOG_FORMAT", "json")


def child_exit(server, worker):  # noqa: ANN001 - gunicorn's hook signature
    """prometheus-client multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before gunicorn starts and
    emptied then, see deploy/run-production.sh): a dead worker's live gauges must stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # noqa: ANN001 - gunicorn's hook signature
    """Register this web worker with the schema its code was written for, so `hospital db upgrade`
    refuses a destructive migration while it runs (hospital/process_registry.py)."""
    from hospital.jobs import redis_connection
    from hospital.process_registry import Heartbeat
    from hospital.wsgi import app

    conn = redis_connection(app)
    if conn is not None:
        worker.hospital_heartbeat = Heartbeat(conn, "web")
        worker.hospital_heartbeat.start()


def worker_exit(server, worker):  # noqa: ANN001 - gunicorn's hook signature
    heartbeat = getattr(worker, "hospital_heartbeat", None)
    if heartbeat is not None:
        heartbeat.stop()
