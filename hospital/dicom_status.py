"""DICOM status codes this platform answers with, and the one mapping from an exception to the
status a peer is sent (pynetdicom's `status.py` idea: one module, not a copy per handler).

Codes are named as the standard names them (PS3.4 Annex B, C, F, J, K; PS3.7 Annex C); the DIMSE-N
codes double as Storage Commitment's FailureReason values (PS3.3 C.14.1.1). A service
that refuses a request raises an exception carrying its `dicom_status` (a `DicomFailure`); the DICOM
node's handlers turn any exception into a status with `failure_status`, so a peer always gets a
status that says why and never a dropped association.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00

# Storage (PS3.4 B.2.3).
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
# C000-CFFF is "cannot understand"; this code says the index, not the data set, failed.
STORE_PROCESSING_FAILURE = 0xC001
# Warning: stored, but not as a plain new instance (PS3.4 B.2.3 "Coercion of Data Elements"); the
# archive answers it when a re-sent SOP Instance UID with different content became a new version.
COERCION_OF_DATA_ELEMENTS = 0xB000
# Failure: a re-send of an instance a rejection note (IHE IOCM) withdrew. The code dcm4chee-arc
# answers ("Subsequent occurrence of rejected Object"), so IOCM-aware senders recognise it.
SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT = 0xA771

# Query/Retrieve and Modality Worklist (PS3.4 C.4, K.4).
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801

# DIMSE-N and general statuses (PS3.7 Annex C).
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
CLASS_INSTANCE_CONFLICT = 0x0119
MISSING_ATTRIBUTE = 0x0120
SOP_CLASS_NOT_SUPPORTED = 0x0122
NO_SUCH_ACTION = 0x0123
REFUSED_NOT_AUTHORIZED = 0x0124
RESOURCE_LIMITATION = 0x0213

# Modality Performed Procedure Step (PS3.4 F.7.2.2.2): an N-SET on a COMPLETED or DISCONTINUED step.
PPS_MAY_NO_LONGER_BE_UPDATED = 0xC310

ERROR_COMMENT_MAX = 64  # ErrorComment is LO

# What pydicom raises when a lazily decoded data set from a peer turns out to be malformed.
DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, AttributeError, NotImplementedError)


class DicomFailure(Exception):
    """Mixed into a domain error that a DICOM peer must be answered with `dicom_status`."""

    dicom_status: int = PROCESSING_FAILURE

    @property
    def status_comment(self) -> str:
        return str(getattr(self, "message", None) or self)


@dataclass(frozen=True)
class ServiceFailures:
    """The statuses one DIMSE service answers with when the cause is ours, not the request's."""

    unavailable: int  # the database is unreachable: the peer may retry later
    undecodable: int  # the request's data set cannot be decoded
    unavailable_comment: str = "service unavailable; try again later"
    undecodable_comment: str = "the data set cannot be decoded"


STORAGE = ServiceFailures(STORE_PROCESSING_FAILURE, CANNOT_UNDERSTAND, "the image index is unavailable; try again later")
FIND = ServiceFailures(OUT_OF_RESOURCES, UNABLE_TO_PROCESS, "index unavailable; try again later",
                       "the query identifier cannot be decoded")
RETRIEVE = ServiceFailures(OUT_OF_RESOURCES, UNABLE_TO_PROCESS, "index unavailable; try again later",
                           "the identifier cannot be decoded")
N_SERVICE = ServiceFailures(PROCESSING_FAILURE, PROCESSING_FAILURE, "procedure step store unavailable; try again later",
                            "the attribute list cannot be decoded")
COMMITMENT = ServiceFailures(PROCESSING_FAILURE, INVALID_ARGUMENT_VALUE, "commitment store unavailable; try again later",
                             "the action information cannot be decoded")

# Every exception `failure_status` knows how to answer; anything else is a bug and propagates.
ANSWERABLE: tuple[type[BaseException], ...] = (DicomFailure, SQLAlchemyError, OSError, *DECODE_ERRORS)


def status_dataset(code: int, comment: str) -> Dataset:
    """A status with an ErrorComment a person at the modality can read."""
    status = Dataset()
    status.Status = code
    # A backslash would split the LO value in two.
    status.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_MAX]
    return status


def failure_status(exc: BaseException, service: ServiceFailures) -> Dataset:
    """The status a peer is sent for `exc` (one of `ANSWERABLE`) raised while serving `service`."""
    if isinstance(exc, DicomFailure):
        return status_dataset(exc.dicom_status, exc.status_comment)
    if isinstance(exc, SQLAlchemyError):
        return status_dataset(service.unavailable, service.unavailable_comment)
    if isinstance(exc, OSError):
        return status_dataset(OUT_OF_RESOURCES, "storage unavailable")
    if isinstance(exc, DECODE_ERRORS):
        return status_dataset(service.undecodable, service.undecodable_comment)
    raise TypeError(f"no DICOM status for {type(exc).__name__}") from exc
