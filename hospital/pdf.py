"""Paper: a template rendered to a PDF (the signed report, the invoice, the receipt), in the
reader's language, that prints the same on any machine.

Every PDF is A4 with the same margins, a running header (the institution and the document's
title) and "Page 1 of 2" / "第 1 页，共 2 页" at the foot. One font family is named for all text,
Noto Sans CJK SC (Debian's fonts-noto-cjk): it holds the Latin and the Simplified Chinese glyphs,
and WeasyPrint embeds the subset of it the document uses, so a patient's Chinese name prints on a
printer or a phone that has no Chinese font. Text in the document's language comes from the
template rendered under the reader's (or a forced) locale, as every page does.

A PDF fetches nothing: the only URLs it may load are `data:` URLs (the key images are embedded
by the caller), so text that ends up in a template can never make the renderer read a local file
or reach the network. The font configuration and the stylesheets are made once per thread
and reused: that saves a quarter to a third of the time of a short document (0.23 s instead of 0.3-0.38 s for a
page of Chinese text); a one-page signed report with its key image, fonts warm, took 0.66-0.85 s
on a loaded 2-core machine, the first one in a process 1.3 s.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app
from weasyprint import CSS, HTML
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import URLFetcher

from hospital.errors import InvalidInput
from hospital.i18n import current_locale_name, gettext, in_locale, normalise

logger = logging.getLogger(__name__)

PDF_MIMETYPE = "application/pdf"
# The family every PDF is set in: Debian's fonts-noto-cjk (scripts/ensure-services.sh installs it).
CJK_FONT_FAMILY = "Noto Sans CJK SC"

BASE_CSS = f"""
@page {{
  size: A4;
  margin: 24mm 16mm 20mm 16mm;
  font-family: "{CJK_FONT_FAMILY}", sans-serif;
  font-size: 8pt;
  color: #555;
  @top-left {{ content: element(document-header); width: 100%; }}
}}
html {{ font-family: "{CJK_FONT_FAMILY}", sans-serif; font-size: 10pt; line-height: 1.45; color: #111; }}
body {{ margin: 0; }}
.document-header {{ position: running(document-header); border-bottom: 0.6pt solid #888; padding-bottom: 2mm;
  width: 100%; }}
.document-header .institution {{ font-weight: bold; font-size: 10pt; color: #111; }}
.document-header .title {{ float: right; }}
h1 {{ font-size: 16pt; margin: 0 0 4mm; }}
h2 {{ font-size: 12pt; margin: 6mm 0 2mm; border-bottom: 0.4pt solid #ccc; padding-bottom: 1mm;
  break-after: avoid; }}
h3 {{ font-size: 10.5pt; margin: 4mm 0 1mm; break-after: avoid; }}
p {{ margin: 0 0 2mm; }}
dl.summary {{ display: grid; grid-template-columns: max-content 1fr; gap: 1mm 5mm; margin: 0 0 3mm; }}
dl.summary dt {{ font-weight: bold; }}
dl.summary dd {{ margin: 0; }}
table {{ width: 100%; border-collapse: collapse; margin: 2mm 0 4mm; }}
th, td {{ text-align: left; padding: 1.5mm 2mm; border-bottom: 0.4pt solid #ccc; vertical-align: top; }}
thead th {{ border-bottom: 0.8pt solid #333; }}
tfoot th, tfoot td {{ border-bottom: none; }}
.num {{ text-align: right; white-space: nowrap; }}
.muted {{ color: #555; }}
.note {{ font-size: 8.5pt; color: #333; }}
figure {{ margin: 1mm 0 3mm; break-inside: avoid; }}
figure img {{ width: 50mm; height: auto; border: 0.4pt solid #888; }}
figcaption {{ font-size: 8.5pt; color: #333; }}
.signature {{ margin-top: 8mm; break-inside: avoid; }}
"""

# Per thread (gunicorn's gthread workers render side by side): Pango's font map is not safe to share
# between threads, and reusing it within one is what makes the second PDF fast.
_per_thread = threading.local()


@dataclass(frozen=True)
class PdfFile:
    """A rendered document, its download name and the language it is written in (BCP 47)."""

    content: bytes
    filename: str
    language: str

    def response(self) -> Response:
        """The PDF as a download: a file name the reader's phone can save it under, and never cached
        by a shared cache (it is a patient's record)."""
        return Response(
            self.content, mimetype=PDF_MIMETYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{self.filename}"',
                "Content-Language": self.language,
                "Cache-Control": "private, no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )


def bcp47(locale_name: str) -> str:
    """The language tag of a catalog name: "zh_CN" -> "zh-CN" (PDF /Lang, FHIR Attachment.language)."""
    return locale_name.replace("_", "-")


def render_pdf(template_name: str, /, **context: Any) -> bytes:
    """`template_name` (which extends "pdf/document.html") rendered in the current locale, as PDF.

    Rendered from the app's Jinja environment without the pages' context processors (who is signed
    in, the menu): a document depends on its record and its language only, so a job (a mail with
    the PDF, made under `i18n.for_user`) renders it outside any request, the same as a download."""
    return html_to_pdf(current_app.jinja_env.get_template(template_name).render(**context))


def html_to_pdf(html: str) -> bytes:
    """HTML (a whole document, in the current locale) as PDF, with the shared base stylesheet and
    this locale's page numbers."""
    document = HTML(string=html, url_fetcher=embedded_only_fetcher())
    font_config, stylesheets = _stylesheets(str(gettext("Page %(page)s of %(pages)s")))
    pdf: bytes = document.write_pdf(stylesheets=stylesheets, font_config=font_config, pdf_tags=True)
    return pdf


def _stylesheets(page_label: str) -> tuple[FontConfiguration, list[CSS]]:
    """This thread's font configuration with the base stylesheet and the page numbers in the
    words of `page_label`, parsed once per thread (and per language)."""
    font_config: FontConfiguration | None = getattr(_per_thread, "font_config", None)
    if font_config is None:
        font_config = FontConfiguration()
        _per_thread.font_config = font_config
        _per_thread.base = CSS(string=BASE_CSS, font_config=font_config)
        _per_thread.page_numbers = {}
    numbers: dict[str, CSS] = _per_thread.page_numbers
    if page_label not in numbers:
        numbers[page_label] = CSS(
            string=f"@page {{ @bottom-right {{ content: {page_counter_css(page_label)}; }} }}", font_config=font_config)
    return font_config, [_per_thread.base, numbers[page_label]]


_COUNTER = re.compile(r"(%\((?:page|pages)\)s)")


def page_counter_css(pattern: str) -> str:
    """A translated "Page %(page)s of %(pages)s" as a CSS `content` value: the words as quoted
    strings around `counter(page)` and `counter(pages)`, in the translation's own order."""
    parts = []
    for piece in _COUNTER.split(pattern):
        if piece == "%(page)s":
            parts.append("counter(page)")
        elif piece == "%(pages)s":
            parts.append("counter(pages)")
        elif piece:
            parts.append('"' + piece.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\A ") + '"')
    return " ".join(parts) or '""'


def embedded_only_fetcher() -> URLFetcher:
    """WeasyPrint's URL fetcher for `data:` URLs only: a document embeds what it shows. One per
    rendering (a fetcher keeps the request it is opening)."""
    return URLFetcher(allowed_protocols={"data"})


def document_language() -> str:
    """The BCP 47 tag of the language the current locale writes in."""
    return bcp47(current_locale_name())


@contextmanager
def document_locale(requested: str | None) -> Iterator[str]:
    """Write the document in `requested` (a download's `?lang=`: a clinician printing for a patient
    who reads the other language) when given, else in the reader's own language."""
    if not requested:
        yield current_locale_name()
        return
    chosen = normalise(requested)
    if chosen is None:
        raise InvalidInput(gettext("A document can be written in English (en) or Simplified Chinese (zh_CN), "
                                   "not %(language)s.", language=requested[:20]))
    with in_locale(chosen):
        yield chosen
