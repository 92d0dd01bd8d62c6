"""Several hosts on one machine, for the multi-host chaos test and benchmark: one Linux network
namespace per host, each with a veth pair to a bridge in the root namespace and an address of its
own on a private /24 (the root namespace is .1, so the test itself reaches every host). Programs
run on a host through `ip netns exec`; the filesystem stays shared, as a shared volume would be.

"Killing a host" SIGKILLs every process in its namespace at once (`ip netns pids`), as a power cut
would. Everything is torn down on exit, and leftovers of a run that was itself killed (its pid,
which every name carries, is gone) are removed before a new run starts. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

PREFIX = "hc"  # hc<pid>-<host> namespaces, hcb<pid> bridges, hc<pid>v<n> veths: <= 15 characters


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace_pids(netns: str) -> list[int]:
    result = _ip("netns", "pids", netns, check=False)
    return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


def kill_namespace(netns: str) -> int:
    """SIGKILL every process in `netns`; returns how many there were."""
    pids = namespace_pids(netns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def remove_leftovers(keep_pid: int | None = None) -> None:
    """Delete namespaces and links of earlier runs whose process is gone (a run killed before its
    clean-up); those of a run still going (another test session) are left alone."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)-[a-z0-9]+", name)
        if match and int(match.group(1)) != keep_pid and not _alive(int(match.group(1))):
            kill_namespace(name)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        match = re.search(rf"^\d+: ({PREFIX}b?(\d+)(v\d+)?)[@:]", line)
        if match and int(match.group(2)) != keep_pid and not _alive(int(match.group(2))):
            _ip("link", "del", match.group(1), check=False)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (a reason to skip with), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        result = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Hosts:
    """Named hosts on a bridge: `hosts.ip["web1"]`, `hosts.run("web1", ...)`, `hosts.kill("web1")`."""

    names: list[str]
    run_id: int = field(default_factory=os.getpid)
    ip: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{PREFIX}b{self.run_id}"

    @property
    def subnet(self) -> str:
        # 10.231.x.0/24 by run, so two sessions at once do not share addresses.
        return f"10.231.{self.run_id % 250 + 1}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge: where the test itself is seen from."""
        return f"{self.subnet}.1"

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def netns(self, name: str) -> str:
        return f"{PREFIX}{self.run_id}-{name}"

    def up(self) -> None:
        remove_leftovers(keep_pid=self.run_id)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(self.names, start=1):
            netns, outside, inside = self.netns(name), f"{PREFIX}{self.run_id}v{index}", f"{PREFIX}{self.run_id}p{index}"
            address = f"{self.subnet}.{10 + index}"
            _ip("netns", "add", netns)
            self.created.append(netns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", netns)
            _ip("link", "set", outside, "master", self.bridge, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", netns, "link", "set", inside, "up")
            self.ip[name] = address

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program on host `name`."""
        return ["ip", "netns", "exec", self.netns(name)]

    def kill(self, name: str) -> int:
        """Power host `name` off: SIGKILL every process on it at once."""
        return kill_namespace(self.netns(name))

    def down(self) -> None:
        for netns in self.created:
            kill_namespace(netns)
        for netns in self.created:
            _ip("netns", "del", netns, check=False)  # its veth end goes with it, and so the pair
        _ip("link", "del", self.bridge, check=False)
        self.created.clear()
