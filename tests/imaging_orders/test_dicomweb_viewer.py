"""DICOMweb for a web viewer (issue #14 point 5): frames, bulk data and BulkDataURIs, transfer
syntax negotiation, QIDO-RS across studies with the standard return attributes, rendered and
thumbnail resources at every level; each checked and audited like the other WADO-RS reads."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.http import parse_options_header

from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from imaging_orders.archive.dicomweb import MAX_LIMIT, parse_multipart_related
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import demo_order, multipart_body, part10, small_ct_study
from tests.imaging_orders.test_dicomweb import other_centre_staff, register_blueprints

MRN = "DWV-0001"
ACCESSION = "DWVACC1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
OCTET = 'multipart/related; type="application/octet-stream"'
# DICOM JSON tags used below.
PIXEL_DATA = "7FE00010"
ICON_IMAGE_SEQUENCE = "00880200"
SOP_INSTANCE_UID = "00080018"
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
PATIENT_ID = "00100020"
PATIENT_SEX = "00100040"
PATIENT_BIRTH_DATE = "00100030"
REFERRING_PHYSICIAN = "00080090"
STUDY_ID = "00200010"
ROWS = "00280010"
COLUMNS = "00280011"
BITS_ALLOCATED = "00280100"
NUMBER_OF_FRAMES = "00280008"
RETRIEVE_URL = "00081190"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"
PPS_START_DATE = "00400244"


@pytest.fixture(scope="module")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return register_blueprints(make_test_app(database_url, tmp_path_factory.mktemp("dicomweb-viewer")))


@pytest.fixture(autouse=True)
def no_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)


def multiframe_of(slices: list[Dataset], *, compress: str | None = None) -> Dataset:
    """The slices as one Enhanced CT instance of len(slices) frames, in a series of its own."""
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = len(slices)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    if compress is not None:
        ds.compress(compress, generate_instance_uid=False)
    return ds


def with_icon(ds: Dataset) -> Dataset:
    """A 64x64 8-bit icon (4096 bytes): a nested bulk data element."""
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel = 64, 64, 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(256)) * 16
    ds.IconImageSequence = DicomSequence([icon])
    return ds


@pytest.fixture()
def viewer_study(as_role: Any, demo: DemoSeed, db_session: Session) -> Iterator[dict[str, Any]]:
    """Series 1: three native CT slices (one with an icon). Series 2: the same three slices as a
    native 3-frame instance, a JPEG 2000 lossless one and an RLE one."""
    demo_order(db_session, demo, mrn=MRN, accession_number=ACCESSION)
    db_session.commit()
    slices = small_ct_study(patient_id=MRN, accession_number=ACCESSION)
    with_icon(slices[0])
    series2 = generate_uid()
    native, j2k, rle = (multiframe_of(slices, compress=c) for c in (None, JPEG2000Lossless, RLELossless))
    for ds in (native, j2k, rle):
        ds.SeriesInstanceUID, ds.SeriesNumber = series2, 2
    body, content_type = multipart_body([part10(ds) for ds in [*slices, native, j2k, rle]])
    response = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    study_uid = slices[0].StudyInstanceUID
    series1 = slices[0].SeriesInstanceUID
    yield {
        "slices": slices, "native": native, "j2k": j2k, "rle": rle, "study_uid": study_uid,
        "series1": series1, "series2": series2,
        "study_url": f"/dicomweb/studies/{study_uid}",
        "series1_url": f"/dicomweb/studies/{study_uid}/series/{series1}",
        "series2_url": f"/dicomweb/studies/{study_uid}/series/{series2}",
    }


def instance_url(study: dict[str, Any], ds: Dataset) -> str:
    return f"/dicomweb/studies/{study['study_uid']}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def parts_of(response: Any) -> list[Any]:
    """The parts of a multipart/related answer, whatever their type."""
    assert response.status_code == 200, response.get_data(as_text=True)
    mimetype, params = parse_options_header(response.headers["Content-Type"])
    assert mimetype == "multipart/related"
    boundary = params["boundary"]
    return parse_multipart_related(response.get_data(), f'multipart/related; type="application/dicom"; boundary={boundary}')


def frame_bytes(study: dict[str, Any], number: int) -> bytes:
    return bytes(study["slices"][number - 1].PixelData)


def assert_problem(response: Any, status: int) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["detail"]


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def test_frames_single_and_multiple_uncompressed_by_default(viewer_study: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    url = instance_url(viewer_study, viewer_study["native"]) + "/frames"
    one = staff.get(f"{url}/2")
    assert one.headers["Content-Type"].startswith(OCTET)
    [part] = parts_of(one)
    assert part.headers["content-type"].startswith("application/octet-stream")
    assert bytes(part.content) == frame_bytes(viewer_study, 2)
    several = parts_of(staff.get(f"{url}/3,1", headers={"Accept": f"{OCTET}; transfer-syntax={EXPLICIT_LE}"}))
    assert [bytes(p.content) for p in several] == [frame_bytes(viewer_study, 3), frame_bytes(viewer_study, 1)]
    # A single-frame instance has frame 1.
    [single] = parts_of(staff.get(instance_url(viewer_study, viewer_study["slices"][1]) + "/frames/1"))
    assert bytes(single.content) == frame_bytes(viewer_study, 2)


def test_frames_of_compressed_instances_are_decompressed_unless_asked(viewer_study: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    for kind in ("j2k", "rle"):
        url = instance_url(viewer_study, viewer_study[kind]) + "/frames/2"
        [default] = parts_of(staff.get(url))
        assert bytes(default.content) == frame_bytes(viewer_study, 2), kind
        [explicit] = parts_of(staff.get(url, headers={"Accept": f"{OCTET}; transfer-syntax={EXPLICIT_LE}"}))
        assert bytes(explicit.content) == frame_bytes(viewer_study, 2), kind

    j2k_url = instance_url(viewer_study, viewer_study["j2k"]) + "/frames/2"
    as_stored = staff.get(j2k_url, headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert 'type="image/jp2"' in as_stored.headers["Content-Type"]
    [codestream] = parts_of(as_stored)
    assert codestream.headers["content-type"] == f"image/jp2; transfer-syntax={JPEG2000Lossless}"
    assert bytes(codestream.content)[:4] == b"\xff\x4f\xff\x51"  # J2K SOC + SIZ markers
    # OHIF's default: whatever is stored, labelled with its syntax.
    [stored] = parts_of(staff.get(j2k_url, headers={"Accept": f"{OCTET}; transfer-syntax=*"}))
    assert stored.headers["content-type"] == f"application/octet-stream; transfer-syntax={JPEG2000Lossless}"
    assert bytes(stored.content) == bytes(codestream.content)
    rle = staff.get(instance_url(viewer_study, viewer_study["rle"]) + "/frames/1,3",
                    headers={"Accept": 'multipart/related; type="image/dicom-rle"'})
    assert len(parts_of(rle)) == 2
    # Native frames are encoded when a lossless compression pydicom can write is asked for.
    encoded = staff.get(instance_url(viewer_study, viewer_study["native"]) + "/frames/1",
                        headers={"Accept": f'multipart/related; type="image/jp2"; transfer-syntax={JPEG2000Lossless}'})
    assert bytes(parts_of(encoded)[0].content)[:4] == b"\xff\x4f\xff\x51"
    baseline = staff.get(j2k_url, headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert_problem(baseline, 406)
    assert "image/jpeg" in baseline.get_json()["detail"]


def test_bad_frame_numbers_are_clear_problems(viewer_study: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    url = instance_url(viewer_study, viewer_study["native"]) + "/frames"
    for bad in ("0", "abc", "1,,2", "-1", "1.5", "9" * 30):
        assert_problem(staff.get(f"{url}/{bad}"), 400)
    missing = staff.get(f"{url}/2,4")
    assert_problem(missing, 404)
    assert "4" in missing.get_json()["detail"]
    assert_problem(staff.get(instance_url(viewer_study, viewer_study["slices"][0]) + "/frames/2"), 404)
    assert_problem(staff.get(f"{viewer_study['series2_url']}/instances/{generate_uid()}/frames/1"), 404)


# ---------------------------------------------------------------------------------------------
# Transfer syntax of whole instances
# ---------------------------------------------------------------------------------------------


def test_instances_are_explicit_little_endian_unless_asked(viewer_study: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    j2k = viewer_study["j2k"]
    url = instance_url(viewer_study, j2k)
    [default] = parts_of(staff.get(url))
    assert default.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    decoded = pydicom.dcmread(BytesIO(bytes(default.content)))
    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert decoded.SOPInstanceUID == j2k.SOPInstanceUID  # a change of syntax is the same instance
    assert bytes(decoded.PixelData) == bytes(viewer_study["native"].PixelData)

    dicom = 'multipart/related; type="application/dicom"'
    [stored] = parts_of(staff.get(url, headers={"Accept": f"{dicom}; transfer-syntax=*"}))
    assert pydicom.dcmread(BytesIO(bytes(stored.content))).file_meta.TransferSyntaxUID == JPEG2000Lossless
    [rle] = parts_of(staff.get(url, headers={"Accept": f"{dicom}; transfer-syntax={RLELossless}"}))
    as_rle = pydicom.dcmread(BytesIO(bytes(rle.content)))
    assert as_rle.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(as_rle.pixel_array, viewer_study["native"].pixel_array)
    # The first acceptable of several, by q.
    preferred = staff.get(url, headers={"Accept": f"{dicom}; transfer-syntax=1.2.840.10008.1.2.4.50; q=0.9, "
                                                  f"{dicom}; transfer-syntax={EXPLICIT_LE}; q=0.5"})
    assert parts_of(preferred)[0].headers["content-type"].endswith(EXPLICIT_LE)
    for refused in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.3.4"):
        answer = staff.get(url, headers={"Accept": f"{dicom}; transfer-syntax={refused}"})
        assert_problem(answer, 406)
        assert refused in answer.get_json()["detail"]
    whole_series = parts_of(staff.get(viewer_study["series2_url"]))
    assert {p.headers["content-type"] for p in whole_series} == {f"application/dicom; transfer-syntax={EXPLICIT_LE}"}


# ---------------------------------------------------------------------------------------------
# Metadata and bulk data
# ---------------------------------------------------------------------------------------------


def test_metadata_names_bulk_data_by_uri_and_the_uris_retrieve_it(viewer_study: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    documents = staff.get(f"{viewer_study['series1_url']}/metadata").get_json()
    by_uid = {d[SOP_INSTANCE_UID]["Value"][0]: d for d in documents}
    first = by_uid[viewer_study["slices"][0].SOPInstanceUID]
    pixel = first[PIXEL_DATA]
    assert pixel["vr"] in ("OW", "OB") and "InlineBinary" not in pixel
    uri = pixel["BulkDataURI"]
    assert uri.startswith("http://") and "/bulkdata/" in uri
    [part] = parts_of(staff.get(uri))
    assert bytes(part.content) == frame_bytes(viewer_study, 1)
    icon = first[ICON_IMAGE_SEQUENCE]["Value"][0][PIXEL_DATA]
    assert "InlineBinary" not in icon
    [icon_part] = parts_of(staff.get(icon["BulkDataURI"]))
    assert bytes(icon_part.content) == bytes(range(256)) * 16

    [j2k] = staff.get(instance_url(viewer_study, viewer_study["j2k"]) + "/metadata").get_json()
    j2k_parts = parts_of(staff.get(j2k[PIXEL_DATA]["BulkDataURI"]))
    assert b"".join(bytes(p.content) for p in j2k_parts) == bytes(viewer_study["native"].PixelData)
    compressed = parts_of(staff.get(j2k[PIXEL_DATA]["BulkDataURI"],
                                    headers={"Accept": f"{OCTET}; transfer-syntax=*"}))
    assert len(compressed) == 3  # one part per frame

    base = instance_url(viewer_study, viewer_study["slices"][0]) + "/bulkdata"
    assert_problem(staff.get(f"{base}/zzzz"), 400)
    assert_problem(staff.get(f"{base}/00100010"), 404)  # PatientName is not bulk data
    assert_problem(staff.get(f"{base}/00880200/5/7FE00010"), 404)
    assert_problem(staff.get(f"{base}/00091010"), 404)


# ---------------------------------------------------------------------------------------------
# QIDO-RS
# ---------------------------------------------------------------------------------------------


def test_qido_series_and_instances_across_studies(viewer_study: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    series = staff.get(f"/dicomweb/series?PatientID={MRN}")
    assert series.status_code == 200 and series.mimetype == "application/dicom+json"
    found = series.get_json()
    assert [s[SERIES_INSTANCE_UID]["Value"][0] for s in found] == [viewer_study["series1"], viewer_study["series2"]]
    # Across studies, the study's attributes come with each series (PS3.18 10.6.3.3).
    assert found[0][STUDY_INSTANCE_UID]["Value"] == [viewer_study["study_uid"]]
    assert found[0][PATIENT_ID]["Value"] == [MRN]
    assert found[1][NUMBER_OF_SERIES_RELATED_INSTANCES]["Value"] == [3]
    assert PPS_START_DATE in found[0]
    assert found[0][RETRIEVE_URL]["Value"][0].endswith(viewer_study["series1"])

    instances = staff.get(f"/dicomweb/instances?PatientID={MRN}&Modality=CT").get_json()
    assert len(instances) == 6
    assert instances[0][PATIENT_ID]["Value"] == [MRN]
    assert instances[0][ROWS]["Value"] == [32] and instances[0][COLUMNS]["Value"] == [32]
    assert instances[0][BITS_ALLOCATED]["Value"] == [16]
    multi = [i for i in instances if i[SOP_INSTANCE_UID]["Value"][0] == viewer_study["native"].SOPInstanceUID]
    assert multi[0][NUMBER_OF_FRAMES]["Value"] == [3]
    in_study = staff.get(f"{viewer_study['study_url']}/instances?SeriesInstanceUID={viewer_study['series2']}").get_json()
    assert len(in_study) == 3
    assert staff.get(f"/dicomweb/instances?StudyInstanceUID={generate_uid()}").get_json() == []

    # The standard study attributes without includefield; includefield by keyword, tag and `all`.
    [study] = staff.get(f"/dicomweb/studies?PatientID={MRN}").get_json()
    for tag in (PATIENT_BIRTH_DATE, PATIENT_SEX, REFERRING_PHYSICIAN, STUDY_ID):
        assert tag in study, tag
    [by_tag] = staff.get(f"/dicomweb/series?PatientID={MRN}&SeriesNumber=1&includefield=00180050").get_json()
    assert by_tag["00180050"]["Value"]  # SliceThickness, read from the stored header
    [every] = staff.get(f"/dicomweb/series?PatientID={MRN}&SeriesNumber=2&includefield=all").get_json()
    assert "00181030" in every  # ProtocolName

    paged = [staff.get(f"/dicomweb/instances?PatientID={MRN}&limit=2&offset={o}").get_json() for o in (0, 2, 4, 6)]
    assert [len(p) for p in paged] == [2, 2, 2, 0]
    uids = [i[SOP_INSTANCE_UID]["Value"][0] for page in paged for i in page]
    assert len(set(uids)) == 6
    capped = staff.get(f"/dicomweb/instances?PatientID={MRN}&limit={MAX_LIMIT + 1}")
    assert capped.status_code == 200 and str(MAX_LIMIT) in capped.headers["Warning"]
    more = staff.get(f"/dicomweb/instances?PatientID={MRN}&limit=2")
    assert "more" in more.headers["Warning"].lower()
    assert_problem(staff.get("/dicomweb/series?limit=-1"), 400)
    assert_problem(staff.get("/dicomweb/instances?includefield=NotAnAttribute"), 400)


def test_qido_across_studies_is_limited_to_the_compartment(viewer_study: dict[str, Any], as_role: Any,
                                                            client: FlaskClient, db_session: Session) -> None:
    for caller in (as_role("pharmacist"), as_role("patient2"), other_centre_staff(client, db_session)):
        assert caller.get("/dicomweb/series").get_json() == []
        assert caller.get("/dicomweb/instances").get_json() == []
    assert len(as_role("admin").get(f"/dicomweb/series?PatientID={MRN}").get_json()) == 2
    assert client.get("/dicomweb/series").status_code == 401
    audited = db_session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.description.like("QIDO-RS series%")))
    assert audited >= 4


# ---------------------------------------------------------------------------------------------
# Rendered and thumbnails
# ---------------------------------------------------------------------------------------------


def test_rendered_and_thumbnails_at_every_level(viewer_study: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    series_rendered = staff.get(f"{viewer_study['series1_url']}/rendered", headers={"Accept": "image/png"})
    assert series_rendered.status_code == 200, series_rendered.get_data(as_text=True)
    assert 'type="image/png"' in series_rendered.headers["Content-Type"]
    images = [Image.open(BytesIO(bytes(p.content))) for p in parts_of(series_rendered)]
    assert [i.size for i in images] == [(32, 32)] * 3
    study_rendered = parts_of(staff.get(f"{viewer_study['study_url']}/rendered"))
    assert len(study_rendered) == 3 + 3 * 3  # every frame of every instance
    assert bytes(study_rendered[0].content)[:2] == b"\xff\xd8"

    for url in (viewer_study["study_url"], viewer_study["series2_url"],
                instance_url(viewer_study, viewer_study["j2k"]),
                instance_url(viewer_study, viewer_study["j2k"]) + "/frames/2"):
        thumbnail = staff.get(f"{url}/thumbnail")
        assert thumbnail.status_code == 200, (url, thumbnail.get_data(as_text=True))
        assert thumbnail.mimetype == "image/jpeg" and thumbnail.get_data()[:2] == b"\xff\xd8"
    sized = staff.get(f"{viewer_study['series1_url']}/thumbnail?viewport=16,16", headers={"Accept": "image/png"})
    assert Image.open(BytesIO(sized.get_data())).size == (16, 16)
    assert_problem(staff.get(f"{viewer_study['series1_url']}/thumbnail?viewport=0,x"), 400)
    assert_problem(staff.get(f"{viewer_study['study_url']}/series/{generate_uid()}/rendered"), 404)
    assert_problem(staff.get(f"{viewer_study['study_url']}/thumbnail", headers={"Accept": "image/gif"}), 406)


# ---------------------------------------------------------------------------------------------
# Authorisation and audit
# ---------------------------------------------------------------------------------------------


def test_viewer_resources_are_refused_outside_the_compartment_and_audited(
    viewer_study: dict[str, Any], as_role: Any, client: FlaskClient, db_session: Session,
) -> None:
    instance = instance_url(viewer_study, viewer_study["native"])
    urls = [f"{instance}/frames/1", f"{instance}/bulkdata/7FE00010", f"{instance}/thumbnail",
            f"{viewer_study['series1_url']}/rendered", f"{viewer_study['series1_url']}/thumbnail",
            f"{viewer_study['study_url']}/thumbnail", f"{viewer_study['study_url']}/rendered"]
    for caller in (as_role("pharmacist"), as_role("patient2"), other_centre_staff(client, db_session)):
        for url in urls:
            assert_problem(caller.get(url), 403)
    for url in urls:
        assert client.get(url).status_code == 401
    denied = db_session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.outcome == 4))
    assert denied >= 3 * len(urls)

    staff = as_role("imaging_staff")
    for url in urls:
        assert staff.get(url).status_code == 200, url
    reads = db_session.scalars(select(AuditEvent.description).where(
        AuditEvent.action == "R", AuditEvent.description.like("WADO-RS%"))).all()
    assert any("frames" in r for r in reads) and any("bulkdata" in r for r in reads)
    assert sum("thumbnail" in r for r in reads) == 3
    assert sum("rendered" in r for r in reads) == 2
