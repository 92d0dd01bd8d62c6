"""What a printed document holds, read back with poppler (pdftotext, pdffonts, pdftoppm, pdfimages):
the tests check the PDF a person gets, not the HTML it was made from."""

from __future__ import annotations

import subprocess
import tempfile
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageStat


def _run(tool: list[str], pdf: bytes) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "document.pdf"
        path.write_bytes(pdf)
        done = subprocess.run([*tool, str(path), *(["-"] if tool[0] == "pdftotext" else [])],
                              capture_output=True, check=True, timeout=60)
        return done.stdout.decode("utf-8")


def pdf_text(pdf: bytes) -> str:
    """The document's text in reading order, with runs of whitespace made single spaces."""
    return " ".join(_run(["pdftotext", "-layout", "-enc", "UTF-8"], pdf).split())


def pdf_fonts(pdf: bytes) -> list[dict[str, str]]:
    """pdffonts' table: name, type, whether embedded and subset."""
    lines = _run(["pdffonts"], pdf).splitlines()[2:]
    fonts = []
    for line in lines:
        parts = line.split()
        # name ... type ... encoding emb sub uni object ID: the flags are the 5th..3rd last columns.
        fonts.append({"name": parts[0], "emb": parts[-5], "sub": parts[-4], "line": line})
    return fonts


def pdf_image_count(pdf: bytes) -> int:
    return max(0, len(_run(["pdfimages", "-list"], pdf).splitlines()) - 2)


def first_page_png(pdf: bytes) -> Image.Image:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "document.pdf"
        path.write_bytes(pdf)
        subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(path), str(Path(folder) / "page")],
                       check=True, timeout=60)
        [page] = sorted(Path(folder).glob("page*.png"))
        return Image.open(BytesIO(page.read_bytes())).convert("L")


def is_blank(image: Image.Image) -> bool:
    """Nothing printed: every pixel the same shade."""
    low, high = image.getextrema()
    return bool(low == high) or ImageStat.Stat(image).stddev[0] < 1.0


def assert_printable_with_embedded_cjk_font(pdf: bytes) -> None:
    assert pdf.startswith(b"%PDF-")
    fonts = pdf_fonts(pdf)
    cjk = [f for f in fonts if "CJK-SC" in f["name"]]
    assert cjk, f"no Noto Sans CJK SC in {fonts}"
    assert all(f["emb"] == "yes" and f["sub"] == "yes" for f in cjk), cjk
    assert all(f["emb"] == "yes" for f in fonts), f"a font is not embedded: {fonts}"
    assert not is_blank(first_page_png(pdf)), "page 1 renders blank"


def pdf_info(pdf: bytes) -> dict[str, str]:
    """pdfinfo's fields: "Pages", "Page size" ("595.276 x 841.89 pts (A4)"), "Title", ..."""
    fields = {}
    for line in _run(["pdfinfo"], pdf).splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields
