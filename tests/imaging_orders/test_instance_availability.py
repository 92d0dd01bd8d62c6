"""Instance Availability Notification (PS3.4 Annex R): when a study completes, every subscriber
configured in DICOM_IAN_SUBSCRIBERS gets an N-CREATE naming the study, its series and its live
instances ONLINE, through the job bus; a subscriber that is down fails its job, and the bus's next
run of that job delivers it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import InstanceAvailabilityNotification
from sqlalchemy import select

from hospital.db import get_db
from hospital.jobs import run_job
from hospital.models import JobRecord, JobStatus
from imaging_orders.archive.availability import ian_subscribers
from imaging_orders.archive.ingest import complete_quiet_studies
from tests.imaging_orders.dicom_payloads import rejection_note, small_ct_study
from tests.imaging_orders.test_dicom_peers import STATION_AE, Node, free_port, node, order  # noqa: F401
from tests.imaging_orders.test_rejection_notes import _store

SUBSCRIBER_AE = "RISIAN"
NOTIFY = "imaging_orders.archive.jobs.notify_instance_availability"
SEND = "imaging_orders.archive.jobs.send_instance_availability"


class Subscriber:
    """A real IAN SCP (pynetdicom) that records what it is told."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, Dataset]] = []
        self.server: Any = None

    def start(self) -> None:
        ae = AE(ae_title=SUBSCRIBER_AE)
        ae.add_supported_context(InstanceAvailabilityNotification)

        def on_n_create(event: Event) -> tuple[int, Dataset | None]:
            self.received.append((str(event.assoc.requestor.ae_title), event.attribute_list))
            return 0x0000, None

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_N_CREATE, on_n_create)])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@pytest.fixture()
def subscriber() -> Iterator[Subscriber]:
    made = Subscriber(free_port())
    try:
        yield made
    finally:
        made.stop()


def _records(node: Node, handler: str) -> list[JobRecord]:
    with get_db(node.app).session() as session:
        records = list(session.scalars(select(JobRecord).where(JobRecord.handler == handler).order_by(JobRecord.id)))
        session.expunge_all()
    return records


def _run(node: Node, record_id: int) -> None:
    """What a worker does with a record (dispatch is off in the node fixture)."""
    with node.app.app_context():
        run_job(record_id)


def test_a_completed_study_is_notified_to_subscribers_and_a_failing_one_is_retried(
    node: Node, order: Any, subscriber: Subscriber,  # noqa: F811
) -> None:
    node.app.config["DICOM_IAN_SUBSCRIBERS"] = f"{SUBSCRIBER_AE}=127.0.0.1:{subscriber.port}"
    datasets = small_ct_study(patient_id="PEER-0001", accession_number="PEERACC1", n_slices=3)
    assert all(s.Status == 0x0000 for s in _store(node, STATION_AE, datasets))
    withdrawn = datasets[2]
    assert _store(node, STATION_AE, [note := rejection_note([withdrawn])])[0].Status == 0x0000
    assert complete_quiet_studies(node.app, now=datetime.now(UTC) + timedelta(seconds=30))
    [notify] = _records(node, NOTIFY)
    _run(node, notify.id)
    [send] = _records(node, SEND)
    assert send.payload["ae_title"] == SUBSCRIBER_AE

    # The subscriber is down: the job fails (recorded), nothing is lost.
    with pytest.raises(Exception, match="no association with RISIAN"):
        _run(node, send.id)
    [failed] = _records(node, SEND)
    assert failed.status is JobStatus.FAILED and "no association" in (failed.last_error or "")
    assert subscriber.received == []

    subscriber.start()
    _run(node, send.id)  # the bus's retry

    [done] = _records(node, SEND)
    assert done.status is JobStatus.DONE and done.attempts == 2
    [(calling_ae, ian)] = subscriber.received
    this_node = node.app.config["DICOM_AE_TITLE"]
    assert calling_ae == this_node
    assert ian.StudyInstanceUID == datasets[0].StudyInstanceUID
    by_series = {str(s.SeriesInstanceUID): s.ReferencedSOPSequence for s in ian.ReferencedSeriesSequence}
    assert set(by_series) == {str(datasets[0].SeriesInstanceUID), str(note.SeriesInstanceUID)}
    images = by_series[str(datasets[0].SeriesInstanceUID)]
    assert [str(i.ReferencedSOPInstanceUID) for i in images] == [str(ds.SOPInstanceUID) for ds in datasets[:2]]
    for item in [*images, *by_series[str(note.SeriesInstanceUID)]]:
        assert item.InstanceAvailability == "ONLINE" and item.RetrieveAETitle == this_node
    assert images[0].ReferencedSOPClassUID == datasets[0].SOPClassUID
    assert "ReferencedPerformedProcedureStepSequence" in ian

    _run(node, send.id)  # delivered: a duplicate delivery does nothing
    assert len(subscriber.received) == 1


def test_no_subscribers_no_notification_jobs(node: Node, order: Any) -> None:  # noqa: F811
    datasets = small_ct_study(patient_id="PEER-0001", accession_number="PEERACC1", n_slices=1)
    assert _store(node, STATION_AE, datasets)[0].Status == 0x0000
    assert complete_quiet_studies(node.app, now=datetime.now(UTC) + timedelta(seconds=30))
    [notify] = _records(node, NOTIFY)
    _run(node, notify.id)
    assert _records(node, SEND) == []


def test_a_malformed_subscriber_entry_is_an_error_naming_it(node: Node) -> None:
    node.app.config["DICOM_IAN_SUBSCRIBERS"] = "RIS=localhost"
    with pytest.raises(ValueError, match="'RIS=localhost' is not AE=host:port"):
        ian_subscribers(node.app)
