"""Every string a person reads has a Chinese translation, and no catalog holds strings no code uses.

Per stage: literal words in a template that are not marked for translation, marked strings with no
(or only a fuzzy) translation, placeholders that differ between the English and the translation,
stale entries, and a compiled `.mo` that is not the `.po`. Fix with
`python -m hospital.i18n_catalogs update <stage>`, translate, then `make catalogs`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hospital import i18n_catalogs
from hospital.i18n_catalogs import untranslated_text

STAGES = i18n_catalogs.stage_packages()


def test_every_stage_with_pages_is_checked() -> None:
    names = {path.name for path in STAGES}
    assert {"hospital", "referrals", "imaging_orders", "ai_services", "followup", "billing"} <= names


@pytest.mark.parametrize("package", STAGES, ids=lambda path: path.name)
def test_stage_is_fully_translated(package: Path) -> None:
    problems = i18n_catalogs.check(package)
    assert not problems, f"{len(problems)} translation problems:\n" + "\n".join(map(str, problems[:60]))


def test_one_english_string_has_one_translation_across_stages() -> None:
    problems = i18n_catalogs.conflicts()
    assert not problems, "\n".join(map(str, problems))


def test_the_check_finds_literal_words_but_not_marked_ones() -> None:
    source = """{% extends "base.html" %}{% block title %}{{ _("Home") }}{% endblock %}
<h1 title="Hidden helper">{{ _("Welcome") }}</h1>
<p>{% trans n=3 %}You have {{ n }} messages{% endtrans %}</p>
<p>{{ x }} · 12 mm</p>
<button>Save</button>
<script>const label = "not prose";</script>
"""
    found = [text for _line, text in untranslated_text(source)]
    assert found == ["Hidden helper", "Save"]


def test_the_catalog_check_sees_an_untranslated_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "stage"
    (package / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "templates" / "page.html").write_text('<p>{{ _("Signed") }}</p><p>{{ _("New words") }}</p>')
    (package / "code.py").write_text('from hospital.i18n import gettext as _\nMESSAGE = _("Old words")\n')
    monkeypatch.setattr(i18n_catalogs, "ROOT", tmp_path)
    [po] = i18n_catalogs.update(package)
    text = po.read_text(encoding="utf-8")
    po.write_text(text.replace('msgid "Signed"\nmsgstr ""', 'msgid "Signed"\nmsgstr "已签署"'), encoding="utf-8")
    (package / "code.py").write_text("MESSAGE = 'gone'\n")
    i18n_catalogs.compile_all(force=True)
    problems = [problem.what for problem in i18n_catalogs.check(package)]
    assert any("untranslated" in what and "New words" in what for what in problems)
    assert any("stale" in what and "Old words" in what for what in problems)
    assert not any("Signed" in what for what in problems)
