"""hospital.pdf: A4 pages with the running header and page numbers in the document's language, the
CJK font embedded as a subset, nothing fetched but embedded images, the reader's or an asked-for
language, and a second document made faster than the first (the fonts are set up once)."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import pytest
from flask import Flask
from PIL import Image

from hospital import pdf
from hospital.errors import InvalidInput
from hospital.i18n import in_locale
from tests.pdf_checks import assert_printable_with_embedded_cjk_font, pdf_image_count, pdf_info, pdf_text


def document(body: str, lang: str = "en") -> str:
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>T</title></head><body>'
            f'<header class="document-header"><span class="title">Title here</span>'
            f'<span class="institution">Riverside Imaging Centre</span></header>{body}</body></html>')


def png_data_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "#c00").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


@pytest.mark.parametrize(("page_label", "css"), [
    ("Page %(page)s of %(pages)s", '"Page " counter(page) " of " counter(pages)'),
    ("第 %(page)s 页，共 %(pages)s 页", '"第 " counter(page) " 页，共 " counter(pages) " 页"'),
    ('%(pages)s: "%(page)s" \\', 'counter(pages) ": \\"" counter(page) "\\" \\\\"'),
])
def test_page_numbers_follow_the_translations_word_order(page_label: str, css: str) -> None:
    assert pdf.page_counter_css(page_label) == css


def test_a_long_document_is_a4_with_header_and_numbered_pages_in_either_language(app: Flask) -> None:
    long_body = "".join(f"<p>Paragraph {n}: 王小明的检查结果。</p>" for n in range(120))
    with app.app_context():
        english = pdf.html_to_pdf(document(long_body))
        with in_locale("zh_CN"):
            chinese = pdf.html_to_pdf(document(long_body, "zh-CN"))

    info = pdf_info(english)
    pages = int(info["Pages"])
    assert info["Page size"].endswith("(A4)") and pages >= 2, info
    text = pdf_text(english)
    assert f"Page 1 of {pages}" in text and f"Page {pages} of {pages}" in text, text[-400:]
    assert text.count("Riverside Imaging Centre") == pages, "the header runs on every page"
    zh_pages = int(pdf_info(chinese)["Pages"])
    zh = pdf_text(chinese)
    assert f"第 1 页，共 {zh_pages} 页" in zh and "王小明的检查结果" in zh
    assert_printable_with_embedded_cjk_font(english)
    assert_printable_with_embedded_cjk_font(chinese)


def test_a_document_embeds_data_images_and_fetches_nothing_else(app: Flask, tmp_path: Path) -> None:
    local = tmp_path / "secret.png"
    Image.new("RGB", (16, 16), "#0c0").save(local)
    body = (f'<p>Embedded</p><img src="{png_data_url()}" alt="">'
            f'<img src="file://{local}" alt=""><img src="http://127.0.0.1:9/x.png" alt="">'
            f'<link rel="stylesheet" href="file://{local}">')
    with app.app_context():
        content = pdf.html_to_pdf(document(body))

    assert "Embedded" in pdf_text(content)
    assert pdf_image_count(content) == 1, "only the data: image is in the PDF"


def test_the_document_language_is_the_readers_or_the_one_asked_for(app: Flask) -> None:
    with app.test_request_context("/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}):
        with pdf.document_locale(None) as chosen:
            assert chosen == "zh_CN" and pdf.document_language() == "zh-CN"
        with pdf.document_locale("en-GB") as chosen:
            assert chosen == "en" and pdf.document_language() == "en"
        with pytest.raises(InvalidInput) as refused:
            with pdf.document_locale("zh-TW"):
                pass  # pragma: no cover - refused before the block runs
        assert "zh_CN" in refused.value.message and "zh-TW" in refused.value.message


def test_the_response_is_a_private_download(app: Flask) -> None:
    with app.app_context():
        response = pdf.PdfFile(b"%PDF-1.7", "imaging-report-3-2026-12-04-zh-CN.pdf", "zh-CN").response()
    assert response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"] == 'attachment; filename="imaging-report-3-2026-12-04-zh-CN.pdf"'
    assert response.headers["Content-Language"] == "zh-CN"
    assert response.headers["Cache-Control"] == "private, no-store"


def test_fonts_are_set_up_once_per_thread(app: Flask) -> None:
    with app.app_context():
        first_config, first_sheets = pdf._stylesheets("Page %(page)s of %(pages)s")
        again_config, again_sheets = pdf._stylesheets("Page %(page)s of %(pages)s")
        start = time.perf_counter()
        pdf.html_to_pdf(document("<p>Warm</p>"))
        warm = time.perf_counter() - start
    assert first_config is again_config and first_sheets == again_sheets
    assert warm < 10, f"a one-page document took {warm:.2f} s"
