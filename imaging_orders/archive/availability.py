"""Instance Availability Notification (PS3.4 Annex R, SOP class 1.2.840.10008.5.1.4.33): telling
the systems that wait for a study (a RIS, a reading workstation, a downstream PACS) that it is here
and retrievable, instead of leaving them to poll with C-FIND.

When a study completes (`StudyCompleted`), the archive sends one N-CREATE of an IAN to every
subscriber configured in `DICOM_IAN_SUBSCRIBERS` ("AE=host:port,AE2=host:port"), each through
the durable job bus as its own job: a subscriber that is down fails its job, which the bus runs
again (RQ's retries, then `hospital jobs sweep --include-failed`) without touching the others.
The notification names the study, each series and each live instance (withdrawn ones, see
`rejection`, are not available) with InstanceAvailability ONLINE and this node's AE title to
retrieve them from.

The archive does not accept IAN as an SCP: it is the source of availability here, and nothing it
holds would change on another system's notification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import InstanceAvailabilityNotification
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.dicom_status import SUCCESS
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from imaging_orders.archive.rejection import LIVE_INSTANCES

logger = logging.getLogger(__name__)

NOTIFICATION_TIMEOUT_SECONDS = 30


class NotificationNotDelivered(RuntimeError):
    """A subscriber could not be reached or did not answer Success; the job bus retries."""


@dataclass(frozen=True)
class Subscriber:
    ae_title: str
    host: str
    port: int


def ian_subscribers(app: Flask) -> list[Subscriber]:
    """The configured subscribers (`DICOM_IAN_SUBSCRIBERS`: "AE=host:port,..."); a malformed entry
    raises ValueError naming it, so a typo is not a silently missing subscriber."""
    subscribers: list[Subscriber] = []
    for entry in str(app.config.get("DICOM_IAN_SUBSCRIBERS") or "").split(","):
        if not entry.strip():
            continue
        ae, _, address = entry.partition("=")
        host, _, port = address.strip().rpartition(":")
        if not ae.strip() or len(ae.strip()) > 16 or not host or not port.isdigit():
            raise ValueError(f"DICOM_IAN_SUBSCRIBERS entry {entry!r} is not AE=host:port")
        subscribers.append(Subscriber(ae.strip(), host, int(port)))
    return subscribers


def availability_notification(session: Session, study_id: int, retrieve_ae_title: str) -> Dataset | None:
    """The IAN for a study's live instances, all ONLINE; None if the study is gone or has none."""
    study = session.get(ImagingStudy, study_id)
    if study is None:
        return None
    rows = session.execute(
        select(ImagingSeries.series_instance_uid, ImagingInstance.sop_class_uid, ImagingInstance.sop_instance_uid)
        .join(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id)
        .where(ImagingSeries.study_id == study_id, LIVE_INSTANCES)
        .order_by(ImagingSeries.number, ImagingSeries.id, ImagingInstance.number, ImagingInstance.id)
    ).all()
    if not rows:
        return None
    by_series: dict[str, list[Dataset]] = {}
    for series_uid, sop_class_uid, sop_instance_uid in rows:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        item.InstanceAvailability = "ONLINE"
        item.RetrieveAETitle = retrieve_ae_title
        by_series.setdefault(series_uid, []).append(item)
    notification = Dataset()
    notification.SpecificCharacterSet = "ISO_IR 192"
    notification.StudyInstanceUID = study.study_instance_uid
    notification.ReferencedPerformedProcedureStepSequence = []  # Type 2: MPPS are not linked to studies here
    series_items = []
    for series_uid, instances in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = instances
        series_items.append(series)
    notification.ReferencedSeriesSequence = series_items
    return notification


def send_notification(notification: Dataset, subscriber: Subscriber, calling_ae_title: str) -> None:
    """N-CREATE `notification` at `subscriber`; `NotificationNotDelivered` unless it answers Success."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(InstanceAvailabilityNotification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NOTIFICATION_TIMEOUT_SECONDS
    where = f"{subscriber.ae_title} at {subscriber.host}:{subscriber.port}"
    assoc = ae.associate(subscriber.host, subscriber.port, ae_title=subscriber.ae_title)
    if not assoc.is_established:
        raise NotificationNotDelivered(f"no association with {where}")
    try:
        if not any(cx.abstract_syntax == InstanceAvailabilityNotification for cx in assoc.accepted_contexts):
            raise NotificationNotDelivered(f"{where} accepted no Instance Availability Notification context")
        status, _ = assoc.send_n_create(notification, InstanceAvailabilityNotification, generate_uid())
        code = getattr(status, "Status", None)
        if code != SUCCESS:
            raise NotificationNotDelivered(
                f"{where} answered {'no status' if code is None else f'status {code:#06x}'}")
    finally:
        if assoc.is_established:
            assoc.release()


def notify_subscriber(session: Session, app: Flask, study_id: int, subscriber: Subscriber) -> bool:
    """Send the study's IAN to one subscriber (a job's work); False if there was nothing to send.
    Raises `NotificationNotDelivered` so the job bus runs it again."""
    notification = availability_notification(session, study_id, str(app.config["DICOM_AE_TITLE"]))
    if notification is None:
        logger.info("IAN for study %s: nothing available to notify", study_id)
        return False
    try:
        send_notification(notification, subscriber, str(app.config["DICOM_AE_TITLE"]))
    except NotificationNotDelivered as exc:
        logger.warning("IAN for study %s not delivered: %s; the job bus retries", study_id, exc)
        raise
    logger.info("IAN for study %s delivered to %s", study_id, subscriber.ae_title)
    return True
