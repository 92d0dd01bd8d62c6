"""The stages' gettext catalogs: extract what their code and templates say, bring each `.po` up to
date, compile, and check that nothing a person reads is left untranslated.

Each stage package (`hospital/`, `referrals/`, ...) keeps `translations/zh_Hans_CN/LC_MESSAGES/messages.po`
beside its templates. `hospital i18n update` adds new strings to it (empty, for a translator) and
marks strings no code uses any more obsolete; `hospital i18n compile` writes the `.mo` files the app
reads (the build runs it); `hospital i18n check` lists every problem, and the test suite runs it.
"""

from __future__ import annotations

import html.parser
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po, write_po
from jinja2 import Environment

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# Babel names Simplified Chinese zh_Hans_CN (a request for "zh_CN" resolves to it).
LOCALES = ("zh_Hans_CN",)
KEYWORDS = {**DEFAULT_KEYWORDS, "lazy_gettext": None, "_l": None, "lazy_ngettext": (1, 2), "raw_ngettext": (1, 2)}
METHOD_MAP = [("**/templates/**.html", "jinja2"), ("**/templates/**.txt", "jinja2"), ("**.py", "python")]
OPTIONS_MAP = {"**/templates/**.html": {"trimmed": "true"}, "**/templates/**.txt": {"trimmed": "true"}}
# Folders in a stage whose text no person reads in the product (tests live outside the stages).
SKIP_PARTS = {"__pycache__", "static", "translations", "weights"}


def stage_packages() -> list[Path]:
    """Every package folder with templates or a catalog: the stages and the core."""
    found = {path.parent for path in ROOT.glob("*/translations")} | {path.parent for path in ROOT.glob("*/templates")}
    return sorted(path for path in found if (path / "__init__.py").exists())


def extract(package: Path) -> Catalog:
    """What `package`'s Python code and templates mark for translation."""
    catalog = Catalog(project=package.name, charset="utf-8")

    def wanted(filename: str) -> bool:
        return not SKIP_PARTS & set(Path(filename).parts)

    for filename, lineno, message, comments, context in extract_from_dir(
        str(package), METHOD_MAP, OPTIONS_MAP, KEYWORDS, strip_comment_tags=True, callback=None,
    ):
        if not wanted(filename):
            continue
        catalog.add(message, None, [(f"{package.name}/{filename}", lineno)], auto_comments=comments,
                    context=context)
    return catalog


def po_path(package: Path, locale: str) -> Path:
    return package / "translations" / locale / "LC_MESSAGES" / "messages.po"


def read_catalog(path: Path, locale: str) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, locale=locale)


def update(package: Path) -> list[Path]:
    """Bring `package`'s catalogs up to date with its code: new strings added untranslated, moved
    ones re-pointed, unused ones marked obsolete (kept at the end for a translator to reuse)."""
    template = extract(package)
    written = []
    for locale in LOCALES:
        path = po_path(package, locale)
        if path.exists():
            catalog = read_catalog(path, locale)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=locale, project=package.name, charset="utf-8", copyright_holder="",
                              msgid_bugs_address="", last_translator="", language_team="")
        created = catalog.creation_date
        catalog.update(template, no_fuzzy_matching=True)
        catalog.creation_date = created  # a date that changed on every update would conflict in every merge
        catalog.obsolete.clear()  # git keeps the history; an obsolete entry only confuses the check
        catalog.fuzzy = False  # the header: a fuzzy header is left out of the .mo, plural forms with it
        write_catalog(path, catalog)
        written.append(path)
    return written


def write_catalog(path: Path, catalog: Catalog) -> None:
    # Sorted by message and without line numbers, so that unrelated edits to a stage do not touch
    # each other's lines of its catalog.
    with path.open("wb") as handle:
        write_po(handle, catalog, width=100, sort_output=True, include_lineno=False, omit_header=False)


def fill(package: Path, translations: dict[str, str | list[str]], locale: str = "zh_Hans_CN") -> list[str]:
    """Write `translations` (English -> translation) into `package`'s catalog; answer the English
    strings of the mapping the catalog does not hold (a typo, or `update` not run)."""
    path = po_path(package, locale)
    catalog = read_catalog(path, locale)
    unknown = []
    for key, text in translations.items():
        context, _, msgid = key.rpartition("\x04")  # "context\x04English", gettext's own spelling
        message = catalog.get(msgid, context=context or None)
        if message is None:
            plural = next((m for m in catalog if isinstance(m.id, tuple) and m.id[0] == msgid), None)
            if plural is None:
                unknown.append(msgid)
                continue
            message = plural
        if isinstance(message.id, tuple):
            forms = [text] if isinstance(text, str) else list(text)
            message.string = tuple(forms * catalog.num_plurals)[: catalog.num_plurals]
        else:
            message.string = text if isinstance(text, str) else text[0]
        message.flags.discard("fuzzy")
    write_catalog(path, catalog)
    return unknown


def compile_catalog(path: Path, locale: str) -> Path:
    mo = path.with_suffix(".mo")
    with mo.open("wb") as handle:
        write_mo(handle, read_catalog(path, locale), use_fuzzy=False)
    return mo


def compile_all(force: bool = False) -> list[Path]:
    """Every stage's `.po` compiled where its `.mo` is missing or older (or always, with force)."""
    written = []
    for package in stage_packages():
        for locale in LOCALES:
            path = po_path(package, locale)
            mo = path.with_suffix(".mo")
            if not path.exists():
                continue
            if force or not mo.exists() or mo.stat().st_mtime < path.stat().st_mtime:
                written.append(compile_catalog(path, locale))
    return written


@dataclass(frozen=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _key(message: Message) -> tuple[str, str | None]:
    msgid = message.id if isinstance(message.id, str) else message.id[0]
    return msgid, message.context


def check(package: Path) -> list[Problem]:
    """Everything wrong with `package`'s translations: literal text in a template that is not marked
    for translation, a marked string with no (or a fuzzy) translation, a translation whose
    placeholders differ from the English, an entry no code uses (stale), a `.mo` that is not the
    compiled `.po`."""
    problems = [*check_templates(package)]
    template = extract(package)
    wanted = {_key(message): message for message in template if message.id}
    for locale in LOCALES:
        path = po_path(package, locale)
        where = str(path.relative_to(ROOT))
        if not wanted and not path.exists():
            continue
        if not path.exists():
            problems.append(Problem(where, f"missing: {len(wanted)} strings have no {locale} catalog"))
            continue
        catalog = read_catalog(path, locale)
        have = {_key(message): message for message in catalog if message.id}
        for key, message in wanted.items():
            found = have.get(key)
            place = ", ".join(f"{file}:{line}" for file, line in message.locations[:2])
            if found is None:
                problems.append(Problem(place, f"not in {where}: {key[0]!r}"))
            elif found.fuzzy:
                problems.append(Problem(place, f"fuzzy (unreviewed) in {where}: {key[0]!r}"))
            elif not _translated(found):
                problems.append(Problem(place, f"untranslated in {where}: {key[0]!r}"))
        for key in have.keys() - wanted.keys():
            problems.append(Problem(where, f"stale (no code uses it): {key[0]!r}"))
        for message, errors in catalog.check():
            for error in errors:
                problems.append(Problem(where, f"{message.id!r}: {error}"))
        problems.extend(_check_compiled(path, catalog, where))
    return problems


def _translated(message: Message) -> bool:
    if isinstance(message.string, (list, tuple)):
        return all(part.strip() for part in message.string)
    return bool(message.string and message.string.strip())


def _check_compiled(path: Path, catalog: Catalog, where: str) -> Iterator[Problem]:
    mo = path.with_suffix(".mo")
    if not mo.exists():
        yield Problem(where, "not compiled: run `make catalogs` (hospital i18n compile)")
        return
    with mo.open("rb") as handle:
        compiled = read_mo(handle)
    expected = BytesIO()
    write_mo(expected, catalog, use_fuzzy=False)
    expected.seek(0)
    fresh = read_mo(expected)
    old = {(_key(m), str(m.string)) for m in compiled if m.id}
    new = {(_key(m), str(m.string)) for m in fresh if m.id}
    if old != new:
        yield Problem(where, "the compiled .mo is older than the .po: run `make catalogs`")


def conflicts() -> list[Problem]:
    """Strings that two stages translate differently. The app merges every stage's catalog into one
    (a page may show any stage's words), so one English string has one translation: where the same
    word means two things, one of them needs a context (`pgettext("invoice", "Open")`)."""
    said: dict[tuple[str, str | None], dict[str, str]] = {}
    for package in stage_packages():
        for locale in LOCALES:
            path = po_path(package, locale)
            if not path.exists():
                continue
            for message in read_catalog(path, locale):
                if message.id and _translated(message):
                    text = message.string if isinstance(message.string, str) else str((message.string or [""])[0])
                    said.setdefault(_key(message), {})[package.name] = text
    return [
        Problem(" / ".join(sorted(by_stage)), f"{key[0]!r}{f' (context {key[1]!r})' if key[1] else ''} is translated "
                + ", ".join(f"{text!r} in {stage}" for stage, text in sorted(by_stage.items())))
        for key, by_stage in said.items() if len(set(by_stage.values())) > 1
    ]


# Literal text in templates -------------------------------------------------------------------------

# Attributes whose value a person reads or hears.
VISIBLE_ATTRIBUTES = {"title", "alt", "placeholder", "aria-label", "aria-description", "label", "data-confirm"}
# Words that are the same in both languages (standards, units); text made only of these passes.
SAME_IN_EVERY_LANGUAGE = {
    "DICOM", "DICOMweb", "FHIR", "HL7", "SMART", "AI", "PDF", "ID", "UID", "AE", "CT", "MR", "MRI", "DX", "CR",
    "US", "PT", "NM", "MG", "XA", "mm", "cm", "kg", "ml", "mg", "g", "µg", "mSv", "HU", "EUR", "CNY", "JSON", "QR",
    "OAuth", "JWKS", "URL", "URI", "HTTP", "HTTPS", "IAN", "SR", "SEG", "KOS", "WADO", "QIDO", "STOW", "MWL", "MPPS",
    "Orthanc", "CSV",
}
_LETTERS = re.compile(r"[A-Za-z\u3400-\u9fff]+")
_PLACEHOLDER = "\x00"


class _VisibleText(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, str]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style"}:
            self._skip += 1
        kind = dict(attrs).get("type")
        for name, value in attrs:
            visible = name in VISIBLE_ATTRIBUTES or (name == "value" and tag == "input" and kind in {"submit", "button"})
            if visible and value:
                self.found.append((self.getpos()[0], value))

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"} and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.found.append((self.getpos()[0], data))


def untranslated_text(source: str, env: Environment | None = None) -> list[tuple[int, str]]:
    """Literal words a template shows that are not inside `_()`, `gettext` or `{% trans %}`: the
    template's own text with every expression and tag replaced by a placeholder, read as HTML."""
    env = env or Environment(extensions=["jinja2.ext.i18n"])
    pieces: list[str] = []
    in_trans = 0
    expecting_block_name = False
    for _lineno, token, value in env.lex(source):
        if token == "block_begin":
            expecting_block_name = True
            pieces.append(_PLACEHOLDER + "\n" * value.count("\n"))
            continue
        if expecting_block_name and token == "name":
            expecting_block_name = False
            if value == "trans":
                in_trans += 1
            elif value == "endtrans":
                in_trans = max(0, in_trans - 1)
            pieces.append("\n" * str(value).count("\n"))
            continue
        expecting_block_name = expecting_block_name and token == "whitespace"
        if token == "data":
            pieces.append(_PLACEHOLDER * bool(value.strip()) if in_trans else value)
        else:
            if token in {"variable_begin", "comment_begin", "raw_begin"}:
                pieces.append(_PLACEHOLDER)
            # Keep the template's line numbers: an expression's own line breaks stay.
            pieces.append("\n" * str(value).count("\n"))
    parser = _VisibleText()
    parser.feed("".join(pieces))
    parser.close()
    offenders = []
    for line, text in parser.found:
        words = _LETTERS.findall(text.replace(_PLACEHOLDER, " "))
        if words and not all(word in SAME_IN_EVERY_LANGUAGE for word in words):
            offenders.append((line, " ".join(text.replace(_PLACEHOLDER, "…").split())))
    return offenders


def templates_of(package: Path) -> Iterable[Path]:
    return sorted((package / "templates").rglob("*.html")) if (package / "templates").exists() else []


def check_templates(package: Path) -> Iterator[Problem]:
    env = Environment(extensions=["jinja2.ext.i18n"])
    for path in templates_of(package):
        for line, text in untranslated_text(path.read_text(encoding="utf-8"), env):
            yield Problem(f"{path.relative_to(ROOT)}:{line}", f"not marked for translation: {text!r}")


def main(argv: list[str] | None = None) -> int:
    """`python -m hospital.i18n_catalogs update [STAGE ...] | compile | check [STAGE ...] |
    fill STAGE translations.json` (a JSON object: English -> Chinese; "context\u0004English" for a
    string with a context)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hospital.i18n_catalogs", description=main.__doc__)
    parser.add_argument("action", choices=["update", "compile", "check", "fill"])
    parser.add_argument("stages", nargs="*", help="stage folders (default: all)")
    parser.add_argument("--force", action="store_true", help="compile even an up-to-date .mo")
    args = parser.parse_args(argv)
    packages = [ROOT / name.strip("/") for name in args.stages] or stage_packages()
    if args.action == "compile":
        for path in compile_all(force=args.force):
            print(f"compiled {path.relative_to(ROOT)}")
        return 0
    if args.action == "fill":
        import json

        stage, mapping_file = args.stages
        mapping = json.loads(Path(mapping_file).read_text(encoding="utf-8"))
        unknown = fill(ROOT / stage.strip("/"), mapping)
        for msgid in unknown:
            print(f"not in the catalog (run update first?): {msgid!r}")
        return 1 if unknown else 0
    if args.action == "update":
        for package in packages:
            for path in update(package):
                print(f"updated {path.relative_to(ROOT)}")
        return 0
    problems = [problem for package in packages for problem in check(package)] + conflicts()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
