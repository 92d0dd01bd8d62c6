"""Multi-host chaos benchmark (issue 18): the layout of deploy/MULTIHOST.md on twelve hosts made of
network namespaces on this machine, load through HAProxy, and during it a web node and an AI node
powered off, the Redis master SIGKILLed (Sentinel promotes the replica) and the PostgreSQL primary
SIGKILLed (its synchronous standby promoted); then a reconciliation of every acknowledged study,
report, charge and audit row. tests/chaos/test_multihost.py runs the same, shorter, in `make test`.

Run as root: `.venv/bin/python bench/multihost.py --duration 90 --record` (writes the section
"Multi-host chaos (issue 18)" of bench/RESULTS.md). Everything is its own (PostgreSQL clusters,
Redis, namespaces), removed at the end; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.hosts import netns_unavailable  # noqa: E402
from tests.chaos.load_client import record_section  # noqa: E402
from tests.chaos.multihost import Cluster, run_chaos  # noqa: E402

HEADING = "## Multi-host chaos (issue 18)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=90, help="seconds of load")
    parser.add_argument("--clients", type=int, default=2, help="concurrent client loops")
    parser.add_argument("--slices", type=int, default=8, help="CT slices per study")
    parser.add_argument("--think", type=float, default=4.0, help="seconds each client pauses between rounds")
    parser.add_argument("--drain-timeout", type=float, default=240, help="seconds to wait for the work to drain")
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    reason = netns_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with Cluster() as cluster:
        summary = run_chaos(cluster, duration=args.duration, clients=args.clients, slices=args.slices,
                            think_seconds=args.think, drain_timeout=args.drain_timeout)
    summary["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(json.dumps(summary, indent=2))
    r = summary["reconciliation"]
    ok = (r["lost_studies"] == 0 and r["duplicate_reports"] == 0 and r["duplicate_charges"] == 0
          and r["audit_rows_missing"] == 0 and r["studies_with_one_report_and_charges"] == r["studies_sent"])
    if args.record:
        record(summary, args, ok)
    return 0 if ok else 1


def record(summary: dict[str, Any], args: argparse.Namespace, ok: bool) -> None:
    r, f = summary["reconciliation"], summary["failover"]
    lines = [
        HEADING, "",
        f"`bench/multihost.py` (run as root: `.venv/bin/python bench/multihost.py --duration {args.duration:.0f} "
        f"--clients {args.clients} --slices {args.slices} --think {args.think:g} --record`); the layout is "
        "deploy/MULTIHOST.md's, on twelve hosts made of network namespaces on this 2-CPU machine: PostgreSQL 15 "
        "primary + synchronous streaming standby, Redis master + replica + three sentinels, web1/web2 (gunicorn, "
        "1 worker x 4 threads) and dicom1/dicom2 behind HAProxy (HTTP checked on /readyz; TCP), ai1/ai2 (an `ai` "
        "worker and a billing+notify+default worker each). Each client round, through the balancer: referral, "
        f"acceptance, slot search, booking, worklist, a {args.slices}-slice CT study over one association, "
        f"then {args.think:g} s of pause.", "",
        "| load | requests | 5xx / I/O failures | API p50 | API p99 | studies sent | acknowledged | failed C-STOREs |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['duration_s']} s, {summary['clients']} clients | {summary['requests']} | "
        f"{summary['http_failures_5xx_or_io']} | {summary['p50_ms']} ms | {summary['p99_ms']} ms | "
        f"{summary['studies_acknowledged'] + summary['cstore_failures']} | {summary['studies_acknowledged']} | "
        f"{summary['cstore_failures']} |", "",
        "Chaos during the run: " + "; ".join(e for e in summary["chaos"] if e != "drain timed out") + ".", "",
        f"Failover: Redis replica promoted by the sentinels {f.get('redis_promoted_s')} s after the master's "
        f"SIGKILL; PostgreSQL standby promoted {f.get('postgres_promoted_s')} s after the primary's SIGKILL "
        f"(promotion by the harness, as an operator or failover manager would), a write through the balancer "
        f"succeeded {f.get('postgres_serving_again_s')} s after it.", "",
        ("Reconciliation when the drain timed out, work still queued "
         if "drain timed out" in summary["chaos"] else "Reconciliation after the work drained ")
        + f"({summary['drain_s']} s): lost studies **{r['lost_studies']}**, duplicate reports "
        f"**{r['duplicate_reports']}**, duplicate charges **{r['duplicate_charges']}**, audit rows missing "
        f"**{r['audit_rows_missing']}** of {r['audit_rows_expected']} promised by 2xx answers; "
        f"{r['studies_with_one_report_and_charges']} of {r['studies_sent']} acknowledged studies with exactly one "
        f"report, one scan charge and one AI charge; {r['scan_charges']} scan and {r['ai_charges']} AI charges in "
        f"all; job records {r['jobs']}. {'Pass' if ok else 'FAIL'}.", "",
        f"Run {summary.get('finished_at', 'on this machine')}. The load is light on purpose (two clinics with a "
        "pause between rounds, so that one AI node keeps up once the other is off): this run measures what "
        "survives the failures, not throughput (see \"Load and chaos\" for that). Few requests are in flight "
        "at each kill; one caught by it gets a 5xx, or a C-STORE a failure status (0xC001 while the database "
        "fails over), which the client counts and never treats as acknowledged. The PostgreSQL promotion is quick because a synchronous standby is always "
        "caught up; a production failover adds the time to decide the primary is dead.", "",
    ]
    record_section(ROOT / "bench" / "RESULTS.md", HEADING, lines)


if __name__ == "__main__":
    sys.exit(main())
