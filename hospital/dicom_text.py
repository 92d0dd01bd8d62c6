"""Text in DICOM in any script: person names in their component groups, and the character set that
carries them.

A Chinese patient's name goes into DICOM the way PS3.5 Annex H writes it: the alphabetic group in
Hanyu Pinyin (which every modality console, film printer and foreign PACS can show) and the
ideographic group in Han characters, "Wang^Xiaoming=王^小明". Surnames are read as surnames: 单 is
Shan, 曾 Zeng, 区 Ou, not the everyday readings a dictionary gives first. Names in any other script
keep one group, family name first ("Rivera^Alex").

Whatever we encode that holds a value outside ASCII declares SpecificCharacterSet ISO_IR 192
(UTF-8): without it pydicom writes "?" for each such character, and the name is lost with only a
warning in a log. A data set that is all ASCII keeps its encoding (and its lack of a declaration).

Importing this module also corrects pydicom's decoding of ISO 2022 IR 58 (GB2312 with escape
sequences, used by older Chinese modalities): pydicom 3.0 hands such fragments to Python's gb2312
codec expecting it to strip the escape sequence, which it does not, so "王" arrived as "\\x1b$)A王"
and was written with no escape sequence at all (`_correct_iso_ir_58`).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator

import pydicom.charset
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

logger = logging.getLogger(__name__)

UNICODE_CHARACTER_SET = "ISO_IR 192"
# Terms of SpecificCharacterSet that name the default repertoire (ASCII), or none at all.
DEFAULT_REPERTOIRE_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
# Value representations holding text in the Specific Character Set (PS3.5 6.1.2.3); the others
# (CS, DA, UI, AS ...) are limited to the default repertoire.
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
# Characters that delimit PN components (^), groups (=) and values (\): never part of a name.
_PN_DELIMITERS = str.maketrans({"^": " ", "=": " ", "\\": " "})

# Surnames whose reading as a surname differs from the reading pypinyin gives the character alone
# (pypinyin has no surname mode). The commonest from the Hundred Family Surnames with a distinct
# surname reading; two-character surnames pypinyin reads wrongly character by character first.
SURNAME_READINGS: dict[str, str] = {
    "尉迟": "yuchi", "万俟": "moqi", "单于": "chanyu",
    "单": "shan", "曾": "zeng", "区": "ou", "解": "xie", "仇": "qiu", "朴": "piao", "查": "zha",
    "盖": "ge", "乐": "yue", "缪": "miao", "种": "chong", "翟": "zhai", "覃": "qin", "召": "shao",
    "秘": "bi", "句": "gou", "重": "chong", "便": "pian", "薄": "bo", "员": "yun", "繁": "po",
    "折": "she", "隗": "wei", "阚": "kan", "卜": "bu", "能": "nai", "祭": "zhai", "缴": "zhuo",
    "藏": "zang", "都": "du", "黑": "he", "蕃": "pi", "长": "zhang", "尉": "wei",
}


def _correct_iso_ir_58() -> None:
    """Let pydicom strip ISO 2022 IR 58's escape sequence itself, as it does for the single-byte
    code extensions, when Python's codec does not (it never has: "iso_ir_58" is plain GB2312)."""
    handled = pydicom.charset.handled_encodings
    if "iso_ir_58" in handled and "\x1b" in b"\x1b$)A\xcd\xf5".decode("iso_ir_58"):
        pydicom.charset.handled_encodings = tuple(e for e in handled if e != "iso_ir_58")  # type: ignore[assignment]


_correct_iso_ir_58()


def is_han(text: str) -> bool:
    """Whether `text` holds a Han (Chinese) character: CJK unified ideographs and extensions."""
    return any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\U00020000" <= ch <= "\U0002ffff"
               for ch in text)


def dicom_person_name(family: str, given: str) -> str:
    """A person's name as a DICOM PN value: "Wang^Xiaoming=王^小明" for a Han name, "Rivera^Alex"
    for others. Characters that would split the value (^ = \\) become spaces."""
    family = " ".join(family.translate(_PN_DELIMITERS).split())
    given = " ".join(given.translate(_PN_DELIMITERS).split())
    ideographic = f"{family}^{given}".rstrip("^")
    if not is_han(family + given):
        return ideographic
    alphabetic = f"{pinyin_surname(family)}^{pinyin_given_name(given)}".rstrip("^")
    return f"{alphabetic}={ideographic}"


def pinyin_surname(family: str) -> str:
    """A surname in Hanyu Pinyin, capitalised, syllables joined: 欧阳 -> "Ouyang", 单 -> "Shan"."""
    if family in SURNAME_READINGS:
        return _romanised(SURNAME_READINGS[family])
    syllables = [SURNAME_READINGS.get(ch) or _pinyin(ch) for ch in family] if len(family) <= 2 else [_pinyin(family)]
    return _romanised("".join(syllables))


def pinyin_given_name(given: str) -> str:
    """A given name in Hanyu Pinyin, capitalised, syllables joined: 小明 -> "Xiaoming".

    The whole name is read at once, so pypinyin's phrase readings apply (重阳 Chongyang)."""
    return _romanised(_pinyin(given))


def _pinyin(text: str) -> str:
    # Imported on first use: pypinyin loads its dictionaries on import (a second or more), and
    # every process imports this module through `hospital.models`, most never to read a Han name.
    from pypinyin import Style, lazy_pinyin

    # Passport and ID practice (GB/T 28039): no tone marks, no apostrophes; ü as "yu" (吕 Lyu).
    return "".join(lazy_pinyin(text, style=Style.NORMAL, errors=_ascii_folded)).replace("v", "yu")


def _ascii_folded(text: str) -> str:
    """Non-Han characters in a Han name (a Latin initial, a middle dot) as ASCII, or dropped: the
    alphabetic group must stay within the default repertoire."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if ch.isascii() and (ch.isalnum() or ch in " -'"))


def _romanised(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Character sets of data sets we encode
# ---------------------------------------------------------------------------------------------


def declare_character_set(ds: Dataset) -> None:
    """Declare ISO_IR 192 on `ds` when a text value outside ASCII would not survive its present
    declaration (none, the default repertoire, or one that lacks the characters).

    Values read from bytes in the old character set are decoded first, so they are re-encoded in
    UTF-8 rather than reinterpreted. A data set that is all ASCII, or whose declared character
    set holds all its characters (a source image's GB18030 copied into an SR), is left as it is.
    """
    values = list(_text_values(ds))
    if all(value.isascii() for value in values):
        return
    declared = ds.get("SpecificCharacterSet")
    if declared and _encodes_all(values, declared):
        return
    _convert_raw_elements(ds)
    ds.SpecificCharacterSet = UNICODE_CHARACTER_SET
    logger.debug("declared SpecificCharacterSet %s (was %r)", UNICODE_CHARACTER_SET, declared)


def _convert_raw_elements(ds: Dataset) -> None:
    """Decode every element still held as read bytes, in the character set it was read in.

    Not `Dataset.decode()`: that re-decodes values set as text too, through the old character
    set, and turns each Han character of a name set in Python into "?"."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or []:
                _convert_raw_elements(item)


def _text_values(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _text_values(item)
        elif elem.VR in TEXT_VRS and elem.value is not None:
            yield from _strings(elem)


def _strings(elem: DataElement) -> Iterator[str]:
    values = elem.value if elem.VM > 1 else [elem.value]
    for value in values:
        if isinstance(value, PersonName):
            yield str(value)
        elif isinstance(value, bytes):
            yield value.decode("latin-1")  # undecoded: non-ASCII bytes make it count as non-ASCII
        elif value is not None:
            yield str(value)


def _encodes_all(values: list[str], declared: str | list[str]) -> bool:
    """Whether every character of `values` is in one of the declared character sets (a code
    extension switches between them within a value, so a character at a time is enough)."""
    terms = [declared] if isinstance(declared, str) else list(declared)
    # An empty or default term is the default repertoire (ASCII); an unknown term encodes nothing.
    encodings = [pydicom.charset.python_encoding.get(term.strip(), "") if term.strip() not in DEFAULT_REPERTOIRE_TERMS
                 else "ascii" for term in terms]
    for character in {ch for value in values for ch in value if not ch.isascii()}:
        if not any(_encodes(character, encoding) for encoding in encodings):
            return False
    return True


def _encodes(character: str, encoding: str) -> bool:
    if not encoding:
        return False
    try:
        character.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True
