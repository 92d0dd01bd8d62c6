"""`multipart/related` bodies (RFC 2046, RFC 2387) as DICOMweb sends them: STOW-RS requests to the
archive and to the research database, and the multipart answers of WADO-RS read back in tests."""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.http import parse_options_header

from hospital.errors import InvalidInput, UnsupportedMediaType

_MAX_BOUNDARY = 70  # RFC 2046


@dataclass(frozen=True)
class BodyPart:
    headers: dict[str, str]
    content: memoryview


def parse_multipart_related(body: bytes, content_type: str) -> list[BodyPart]:
    """Split a `multipart/related; type="application/dicom"` body into its parts (RFC 2046/2387).

    The parts are views into `body`, so the body is held once however many parts it has.
    """
    mimetype, params = parse_options_header(content_type or "")
    if mimetype.lower() != "multipart/related":
        raise UnsupportedMediaType(f'STOW-RS takes multipart/related; type="application/dicom", not {mimetype!r}')
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(f"only application/dicom parts are accepted, not {part_type!r}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        raise InvalidInput("the multipart Content-Type needs a boundary of 1 to 70 characters")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    position = body.find(delimiter)
    if position < 0 or (position > 0 and body[position - 2 : position] != b"\r\n"):
        raise InvalidInput("the body does not contain the multipart boundary")
    parts: list[BodyPart] = []
    position += len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            return parts  # close delimiter; the epilogue is ignored
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise InvalidInput("malformed multipart boundary line")
        headers_end = body.find(b"\r\n\r\n", line_end)
        if headers_end < 0:
            raise InvalidInput(f"multipart part {len(parts) + 1} has no end of headers")
        headers = _part_headers(body[line_end + 2 : headers_end])
        start = headers_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidInput(f"multipart part {len(parts) + 1} is not terminated by the boundary")
        parts.append(BodyPart(headers, view[start:end]))
        position = end + 2 + len(delimiter)


def _part_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers
