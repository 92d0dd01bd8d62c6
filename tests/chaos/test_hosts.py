"""The hosts of the multi-host chaos run (tests/chaos/hosts.py): namespaces that reach each other
over the bridge, a host powered off whole, nothing left behind, and a killed run's leftovers
removed by the next run while a live run's are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.chaos.hosts import Hosts, netns_unavailable, remove_leftovers
from tests.chaos.processes import wait_until

pytestmark = pytest.mark.chaos


@pytest.fixture(autouse=True)
def _needs_namespaces() -> Iterator[None]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    yield


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def reaches(host: str, port: int, *prefix: str) -> bool:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    return subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_hosts_reach_each_other_power_off_whole_and_leave_nothing() -> None:
    hosts = Hosts(["a", "b"])
    try:
        hosts.up()
        server = subprocess.Popen([*hosts.prefix("b"), sys.executable, "-m", "http.server", "--bind", hosts.ip["b"], "8000"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("the server on b", lambda: reaches(hosts.ip["b"], 8000), 10)
        assert reaches(hosts.ip["b"], 8000, *hosts.prefix("a")), "a host reaches another over the bridge"
        assert hosts.kill("b") == 1
        assert server.wait(timeout=10) == -9
    finally:
        hosts.down()
    assert hosts.netns("a") not in ip("netns", "list")
    assert hosts.bridge not in ip("-o", "link", "show")


def test_a_killed_runs_leftovers_go_and_a_live_runs_stay() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, live = f"hc{finished.pid}-x", f"hc{os.getpid()}-y"
    try:
        for name in (dead, live):
            ip("netns", "add", name)
        ip("link", "add", f"hcb{finished.pid}", "type", "bridge")
        remove_leftovers()
        names = ip("netns", "list")
        assert dead not in names and live in names
        assert f"hcb{finished.pid}" not in ip("-o", "link", "show")
    finally:
        for name in (dead, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", f"hcb{finished.pid}"], capture_output=True)
