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


def in_netns(netns: str | None) -> list[str]:
    """The command prefix that runs a program inside network namespace `netns` (none: here)."""
    return ["ip", "netns", "exec", netns] if netns else []


@dataclass
class OwnRedis:
    """A redis-server on a free port, without persistence: a restart comes back empty. With
    `replica_of` it replicates that server; with `netns` it runs in that network namespace."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    netns: str | None = None
    replica_of: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        # protected-mode off: it would refuse every client but loopback when no password is set.
        # Replication over the socket on both ends: a master syncing a replica (and the replica
        # loading it) would otherwise leave a dump.rdb in the directory it was started from.
        args = ["redis-server", "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                "--repl-diskless-load", "swapdb",
                "--dir", tempfile.gettempdir()]
        if self.replica_of is not None:
            args += ["--replicaof", self.replica_of[0], str(self.replica_of[1])]
        self.process = subprocess.Popen([*in_netns(self.netns), *args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(f"redis on {self.host}:{self.port}", self._answers, 10)

    def _answers(self) -> bool:
        return redis_answers(self.host, self.port)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()


def redis_answers(host: str, port: int) -> bool:
    try:
        return bool(Redis(host=host, port=port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except OSError:
        return False
    except Exception:  # noqa: BLE001 - redis.ConnectionError while it boots
        return False


@dataclass
class OwnSentinel:
    """A Redis Sentinel watching `master` under `name`: it calls the master down after a second
    without an answer and, with `quorum` sentinels agreeing, promotes a replica."""

    master: tuple[str, int]
    name: str = "hospital"
    quorum: int = 2
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = None
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chaos-sentinel-")))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        # Sentinel rewrites its configuration file as it learns the set: it must be its own file.
        config = self.work_dir / "sentinel.conf"
        config.write_text("\n".join([
            f"port {self.port}", f"bind {self.host}", "protected-mode no", f"dir {self.work_dir}",
            f"sentinel monitor {self.name} {self.master[0]} {self.master[1]} {self.quorum}",
            f"sentinel down-after-milliseconds {self.name} 1000",
            f"sentinel failover-timeout {self.name} 5000",
            f"sentinel parallel-syncs {self.name} 1", "",
        ]))
        self.process = subprocess.Popen([*in_netns(self.netns), "redis-server", str(config), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(f"sentinel on {self.address}", lambda: redis_answers(self.host, self.port), 10)

    def master_address(self) -> tuple[str, int] | None:
        """Where this sentinel says the master is now (None if it cannot say)."""
        try:
            found = Redis(host=self.host, port=self.port, socket_timeout=1).sentinel_get_master_addr_by_name(self.name)
        except Exception:  # noqa: BLE001 - a sentinel that does not answer cannot say
            return None
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return host, int(found[1])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.work_dir, ignore_errors=True)


@dataclass
class SentinelRedis:
    """A Redis master, one replica and three sentinels: what `REDIS_SENTINELS` points the app at.
    `hosts` gives each member its (address, network namespace): master, replica, three sentinels."""

    name: str = "hospital"
    hosts: list[tuple[str, str | None]] = field(default_factory=lambda: [("127.0.0.1", None)] * 5)
    servers: list[OwnRedis] = field(default_factory=list)
    sentinels: list[OwnSentinel] = field(default_factory=list)

    def start(self) -> None:
        (master_host, master_ns), (replica_host, replica_ns), *watchers = self.hosts
        master = OwnRedis(host=master_host, netns=master_ns)
        self.servers = [master]
        master.start()
        replica = OwnRedis(host=replica_host, netns=replica_ns, replica_of=master.address)
        self.servers.append(replica)
        replica.start()
        for host, netns in watchers:
            sentinel = OwnSentinel(master.address, self.name, host=host, netns=netns)
            self.sentinels.append(sentinel)
            sentinel.start()
        wait_until("the replica to be in sync", lambda: self._in_sync(replica), 20)
        wait_until("the sentinels to see the replica", lambda: all(self._sees_replica(s) for s in self.sentinels), 30)

    @staticmethod
    def _in_sync(replica: OwnRedis) -> bool:
        try:
            info = Redis(host=replica.host, port=replica.port, socket_timeout=1).info("replication")
        except Exception:  # noqa: BLE001 - not up yet
            return False
        return info.get("master_link_status") == "up"

    def _sees_replica(self, sentinel: OwnSentinel) -> bool:
        try:
            return bool(Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1).sentinel_slaves(self.name))
        except Exception:  # noqa: BLE001 - not up yet
            return False

    @property
    def addresses(self) -> str:
        """The value of REDIS_SENTINELS."""
        return ",".join(sentinel.address for sentinel in self.sentinels)

    def master(self) -> OwnRedis:
        """The server the sentinels name as master now."""
        for sentinel in self.sentinels:
            address = sentinel.master_address()
            if address is not None:
                return next(server for server in self.servers if server.address == address)
        raise RuntimeError("no sentinel names a master")

    def kill_master(self) -> float:
        """SIGKILL the master and wait until the sentinels have promoted the replica; returns the
        seconds that took."""
        old = self.master()
        started = time.monotonic()
        old.kill()
        wait_until("a sentinel failover", lambda: all(s.master_address() not in (None, old.address)
                                                      for s in self.sentinels), 30)
        return time.monotonic() - started

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


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
    when we are root (initdb refuses root). Trust authentication, listening on `host` only (in
    network namespace `netns` when given); fsync off, since a crash of the test machine may lose it
    all (a process killed with SIGKILL loses nothing the kernel already holds)."""

    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chaos-pg-")))
    host: str = "127.0.0.1"
    netns: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        # cwd: the postgres user may not be allowed into ours, and initdb needs to know where it is.
        result = subprocess.run([*in_netns(self.netns), *command], cwd=self.data_dir, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).decode(errors='replace')[-2000:]}{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + (self.data_dir / "log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _own_data_dir(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")

    def init(self) -> None:
        self._own_data_dir()
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir / "data"), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def configure(self, lines: list[str]) -> None:
        """Append settings to postgresql.conf (a later line wins over an earlier one)."""
        with open(self.data_dir / "data" / "postgresql.conf", "a") as conf:
            conf.write("\n" + "\n".join(lines) + "\n")

    def trust_network(self, cidr: str) -> None:
        """Let any client and standby on `cidr` in without a password (a throwaway test cluster)."""
        with open(self.data_dir / "data" / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {cidr} trust\nhost replication all {cidr} trust\n")

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "-w", "-t", "30", "-l", str(self.data_dir / "log"),
            "-o", f"-p {self.port} -k {self.data_dir} -c listen_addresses={self.host} -c fsync=off", "start",
        )

    def require_synchronous_standby(self) -> None:
        """From now on a commit is acknowledged only once a standby has its WAL on disk, so a
        standby promoted after this server dies has every transaction a client was told is
        committed. Set once the standby streams (before, every commit would wait for it)."""
        self.configure(["synchronous_commit = on", "synchronous_standby_names = '*'"])
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "reload")
        wait_until("a synchronous standby", lambda: "sync" in self.query("SELECT sync_state FROM pg_stat_replication"), 30)

    def query(self, sql: str) -> list[str]:
        """The first column of `sql`'s rows, read with psql over the socket (an empty list when the
        server does not answer)."""
        result = self._run(str(PG_BIN / "psql"), "-h", str(self.data_dir), "-p", str(self.port),
                           "-U", "postgres", "-d", "postgres", "-Atc", sql, check=False, timeout=10)
        return result.stdout.decode().split() if result.returncode == 0 else []

    def start_standby(self, host: str = "127.0.0.1", netns: str | None = None) -> OwnPostgres:
        """A streaming replica of this (running) cluster, cloned with pg_basebackup and started.
        It requires no standby of its own: once promoted it must accept commits alone."""
        standby = OwnPostgres(host=host, netns=netns)
        standby._own_data_dir()
        standby._run(str(PG_BIN / "pg_basebackup"), "-h", self.host, "-p", str(self.port), "-U", "postgres",
                     "-D", str(standby.data_dir / "data"), "-X", "stream", "-R", "--no-sync", "-c", "fast")
        standby.configure(["synchronous_standby_names = ''", "hot_standby = on"])
        standby.start()
        return standby

    def promote(self) -> float:
        """Make this standby the primary; returns the seconds until it accepts writes."""
        started = time.monotonic()
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "-w", "-t", "60", "promote")
        wait_until("the promoted standby to take writes", lambda: self.query("SELECT pg_is_in_recovery()") == ["f"], 30)
        return time.monotonic() - started

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill_hard(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a power cut would (killing only the
        postmaster leaves its backends serving their sessions for a while)."""
        pid = self.postmaster_pid()
        if pid is not None and _command_name(pid) in ("postgres", "postmaster"):  # not a reused pid
            kill_tree(pid)

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session at once (their transactions roll back), then shuts down cleanly."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "-m", mode, "-w", "-t", "30", "stop",
                  check=False)

    def is_running(self) -> bool:
        return self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir / "data"), "status", check=False).returncode == 0

    def destroy(self) -> None:
        if (self.data_dir / "data" / "postmaster.pid").exists():
            self.stop("immediate")
            self.kill_hard()  # one whose postmaster was killed leaves postmaster.pid (and maybe backends)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def multi_host_url(*clusters: OwnPostgres, database: str = "postgres") -> str:
    """A libpq multi-host DATABASE_URL: the first of `clusters` that takes writes is used, so a
    client reconnecting after a promotion finds the new primary by itself."""
    hosts = "&".join(f"host={cluster.address}" for cluster in clusters)
    return f"postgresql+psycopg://postgres@/{database}?{hosts}&target_session_attrs=read-write&connect_timeout=3"


def hospital_env(database_url: str, redis_url: str, storage: Path, instance: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "DICOM_STORAGE_DIR": str(storage),
            "HOSPITAL_INSTANCE_DIR": str(instance), "SECRET_KEY": "test-secret", "STUDY_QUIET_SECONDS": "1", **extra}


def start_worker(env: dict[str, str], *queues: str, log: Path | None = None,
                 on_host: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`hospital worker` in its own process group, so a SIGKILL takes its work horse with it
    (`on_host`: the command prefix of the host it runs on, see tests/chaos/hosts.py)."""
    args = [*(on_host or []), sys.executable, "-m", "hospital.cli", "worker"]
    for queue in queues:
        args += ["--queue", queue]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _command_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


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


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything under it at once (children first found, then killed
    together: none gets to react)."""
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and everything under it at once, as a power cut would. RQ puts its work
    horse in a session of its own, so killing the process group alone would spare it."""
    kill_tree(process.pid)
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
