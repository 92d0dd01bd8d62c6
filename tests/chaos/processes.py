"""Real processes for chaos tests and the load benchmark: a throwaway Redis and PostgreSQL of our
own (never the shared services the suite uses), and `hospital worker` processes that can be
killed with SIGKILL, horse and all, as a machine losing power would."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from demo.closed_loop import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def wait_until(description: str, probe, timeout: float, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {description}")
        time.sleep(interval)


@dataclass
class OwnRedis:
    """A redis-server on a free port, without persistence: a restart comes back empty."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(f"redis on port {self.port}", self._answers, 10)

    def _answers(self) -> bool:
        try:
            return bool(Redis.from_url(self.url, socket_timeout=0.5).ping())
        except OSError:
            return False
        except Exception:  # noqa: BLE001 - redis.ConnectionError while it boots
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()


def own_postgres_unavailable() -> str | None:
    """Why `OwnPostgres` cannot run here (a reason to skip with), or None when it can."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        return f"no initdb/pg_ctl under {PG_BIN} (set PG_BIN)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser, and initdb refuses root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` user to own the cluster"
    return None


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster in a temporary directory on a free port, run as the `postgres` user
    when we are root (initdb refuses root). Trust authentication, listening on 127.0.0.1 only;
    fsync off, since a crash of the test machine may lose it all."""

    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chaos-pg-")))

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        # cwd: the postgres user may not be allowed into ours, and initdb needs to know where it is.
        result = subprocess.run(command, cwd=self.data_dir, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).decode(errors='replace')[-2000:]}{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + (self.data_dir / "log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir / "data"), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "-w", "-t", "30", "-l", str(self.data_dir / "log"),
            "-o", f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session at once (their transactions roll back), then shuts down cleanly."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "-m", mode, "-w", "-t", "30", "stop",
                  check=False)

    def is_running(self) -> bool:
        return self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "status", check=False).returncode == 0

    def destroy(self) -> None:
        if (self.data_dir / "data" / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def hospital_env(database_url: str, redis_url: str, storage: Path, instance: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "DICOM_STORAGE_DIR": str(storage),
            "HOSPITAL_INSTANCE_DIR": str(instance), "SECRET_KEY": "test-secret", "STUDY_QUIET_SECONDS": "1", **extra}


def start_worker(env: dict[str, str], *queues: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`hospital worker` in its own process group, so a SIGKILL takes its work horse with it."""
    args = [sys.executable, "-m", "hospital.cli", "worker"]
    for queue in queues:
        args += ["--queue", queue]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and everything under it at once, as a power cut would. RQ puts its work
    horse in a session of its own, so killing the process group alone would spare it."""
    for pid in [process.pid, *_descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=10)


def stop_gracefully(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_hard(process)
    except ProcessLookupError:
        pass
