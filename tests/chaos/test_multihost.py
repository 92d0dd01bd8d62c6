"""The multi-host chaos run (issue #18): twelve hosts on one machine (network namespaces), load
through HAProxy, and during it a web node and an AI node powered off, the Redis master SIGKILLed
(Sentinel promotes its replica) and the PostgreSQL primary SIGKILLed (its synchronous standby is
promoted). Afterwards every study the scanner was told is stored has exactly one report, one scan
charge and one AI charge; nothing is charged or reported twice; every audit row a 2xx answer
promised is there. The layout and the run are in tests/chaos/multihost.py; bench/multihost.py
records the numbers in bench/RESULTS.md."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.hosts import netns_unavailable
from tests.chaos.multihost import Cluster, run_chaos
from tests.chaos.processes import own_postgres_unavailable

pytestmark = pytest.mark.chaos


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = netns_unavailable() or own_postgres_unavailable()
    if reason:
        pytest.skip(f"the multi-host chaos run needs network namespaces and its own PostgreSQL: {reason}")
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: scripts/ensure-services.sh (make services) installs it")
    with Cluster(work=tmp_path / "cluster") as running:  # its logs stay with the test's other files
        yield running


def test_multihost_chaos_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    summary = run_chaos(cluster, duration=60, clients=2, slices=8, think_seconds=4.0, drain_timeout=150)
    r = summary["reconciliation"]
    report = json.dumps(summary, indent=1) + "\n" + cluster.logs_tail()
    print(json.dumps(summary))  # the run's numbers, shown with -rP or -s
    assert len(summary["chaos"]) >= 4, report
    assert summary["studies_acknowledged"] >= 5, report
    assert r["lost_studies"] == 0, report
    assert r["studies_with_one_report_and_charges"] == r["studies_received"] == r["studies_sent"], report
    assert r["duplicate_reports"] == 0 and r["duplicate_charges"] == 0, report
    assert r["audit_rows_expected"] > 0 and r["audit_rows_missing"] == 0, report
    assert "drain timed out" not in summary["chaos"], report
