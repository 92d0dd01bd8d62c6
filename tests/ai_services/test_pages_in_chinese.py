"""The AI stage's pages in the reader's language: the report a patient reads, the radiologist's
report and reading list, and the list of reports, in Simplified Chinese with no English left in the
page's own words (only the record's data: names, numbers, the signed text); in English, the
model's confidence as a word and a percentage with what it means."""

from __future__ import annotations

import html
import html.parser
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import DiagnosticReport, ModelPackage, ModelVersion, ReportStatus, ReviewStatus
from ai_services.reading import add_addendum, notify_referrer_of_amendment
from hospital import notifications
from hospital.clock import utcnow
from hospital.i18n import user_display_name
from hospital.models import Notification, Organization
from hospital.seed import DemoSeed
from referrals.models import Referral
from tests.ai_services.package_factory import make_classifier_package
from tests.ai_services.test_drift import three_centres
from tests.ai_services.test_report_pages import store_slices
from tests.factories import make_preliminary_report
from tests.pages import choose_language, csrf_token_of, sign_in
from tests.smtp import Mailbox, mail_through, smtp_server

__all__ = ["mail_through", "smtp_server"]  # fixtures, used by name

# Words that are the same in both languages: standards, units, a key's name, the box's coordinates,
# statistics' symbols.
SAME_IN_BOTH = {"AI", "CT", "PDF", "SHA", "mm", "x", "y", "p", "z", "Ctrl"}
# What people read and hear besides the text: these attributes are checked too.
VISIBLE_ATTRIBUTES = {"title", "alt", "aria-label", "placeholder", "data-confirm"}


class _MainText(html.parser.HTMLParser):
    """The text and the readable attributes inside <main>, as a reader or a screen reader meets it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "main":
            self.depth += 1
        if self.depth:
            self.parts.extend(value for name, value in attrs if name in VISIBLE_ATTRIBUTES and value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "main":
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)


def english_left_in(page: str, data: Iterable[str | None]) -> list[str]:
    """Latin-script words in the page's main content that are not the record's own `data` (names,
    the signed text, codes), a word the same in both languages, or a time zone after a clock time."""
    parser = _MainText()
    parser.feed(page)
    text = " \n ".join(parser.parts)
    for value in sorted(filter(None, data), key=len, reverse=True):
        text = text.replace(value, " ")
    text = re.sub(r"\d{1,2}:\d{2} [A-Z][A-Za-z0-9+\-]*", " ", text)  # "08:30 CST": the zone's abbreviation
    text = re.sub(r"\d[eE][-+]?\d+", " ", text)  # a p-value in scientific notation: 4.19e-05
    return [word for word in re.findall(r"[A-Za-z]+", text) if word not in SAME_IN_BOTH]


def _record_data(session: Session, report: DiagnosticReport) -> list[str]:
    referral = session.get(Referral, report.referral_id)
    assert referral is not None
    patient = report.patient
    signer = [user_display_name(report.signed_by)] if report.signed_by else []
    return [*signer, patient.display_name, patient.mrn, referral.accession_number or "", referral.procedure_description or "",
            referral.reason or "", report.conclusion or ""]


def _signed_report(session: Session, demo: DemoSeed) -> DiagnosticReport:
    report = make_preliminary_report(session, demo, [(4, 4, 12, 12), (20, 20, 26, 26)])
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.findings[1].review_status = ReviewStatus.REJECTED
    report.status, report.signed_at = ReportStatus.FINAL, utcnow()
    report.signed_by_user_id = demo.users["radiologist"].id
    report.conclusion = "右肺上叶结节 8 mm，建议随访。"  # the radiologist's own words, shown as signed
    session.flush()
    return report


def test_a_patient_reads_their_report_in_chinese_in_plain_words(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    report = _signed_report(db_session, demo)
    db_session.commit()
    sign_in(client, "patient")
    choose_language(client, "zh_CN", f"/reports/{report.id}")

    page = client.get(f"/reports/{report.id}").get_data(as_text=True)

    assert '<html lang="zh-CN">' in page
    assert "您的影像结果" in page and "已签发" in page  # the heading and the status word
    assert "放射科医生（专门解读影像的医生）已于" in page and "年" in page  # the date as Chinese writes it
    assert "发现 1 处小病灶" in page, "only the finding the radiologist kept is counted"
    assert '约 8 <abbr title="毫米">mm</abbr>' in page, "the unit is spelled out for the patient"
    assert "第 1 处：直径约 8 毫米" in page and "由 AI 发现，并经放射科医生确认。" in page
    # No model jargon and no confidence for the patient: the radiologist decided.
    assert "置信度" not in page and "判定" not in page
    assert english_left_in(page, _record_data(db_session, report)) == []


def test_a_patient_sees_a_plain_not_yet_available_for_a_draft_in_chinese(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    db_session.commit()
    sign_in(client, "patient")
    choose_language(client, "zh_CN", "/reports")
    response = client.get(f"/reports/{report.id}")
    assert response.status_code == 404
    assert f"报告 {report.id} 暂不可查看：放射科医生签署后才会显示。" in response.get_data(as_text=True)


def test_the_radiologist_reads_and_reviews_in_chinese(
    client: FlaskClient, app: Flask, demo: DemoSeed, db_session: Session,
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12), (6, 6, 10, 10)], confidence=0.62)
    store_slices(db_session, app, demo, report)
    db_session.commit()
    sign_in(client, "radiologist")
    choose_language(client, "zh_CN", f"/reports/{report.id}")

    page = client.get(f"/reports/{report.id}").get_data(as_text=True)

    assert f"报告 {report.id}" in page and "等待放射科医生" in page  # the heading and the status word
    assert "<abbr title=\"病历号\">病历号</abbr>" in page
    assert "AI 置信度：</abbr> 中（62%）" in page and "它不是患病的概率" in page
    assert "判定： <span" in page and "待判定" in page
    assert "肺窗" in page and ">软组织<" in page  # the window presets by name
    assert "签署报告" in page and "添加漏检发现" in page
    # The draft's conclusion is the machine's summary: said in the reader's language from its findings.
    assert "AI 分析：标出 2 处可疑异常待审核（最大 8 mm）。等待放射科医生审核。" in page
    # What the viewer's script says as the reader zooms, measures and windows, in the same language.
    viewer_words = json.loads(html.unescape(re.search(r"id=\"slice-viewer\"[^>]*data-words='([^']*)'", page)[1]))
    assert viewer_words["level"] == "窗位 {centre} HU，窗宽 {width} HU"
    assert viewer_words["slice"] == "第 {number} 层（共 {count} 层），{window}窗"
    assert viewer_words["windows"] == {"lung": "肺", "soft_tissue": "软组织", "bone": "骨"}
    assert english_left_in(page, _record_data(db_session, report)) == []

    # What the page says after a decision is in Chinese too.
    finding = report.findings[0]
    decided = client.post(f"/reports/{report.id}", data={
        "finding_id": finding.id, "decision": "accepted", "csrf_token": csrf_token_of(page)})
    assert decided.status_code == 302
    assert f"已接受发现 {finding.id}。" in client.get(decided.headers["Location"]).get_data(as_text=True)
    # And a refusal: signing with a finding still undecided.
    refused = client.post(f"/reports/{report.id}", data={"action": "sign", "csrf_token": csrf_token_of(page)})
    shown = client.get(refused.headers["Location"]).get_data(as_text=True)
    assert f"发现 {report.findings[1].id} 尚未判定" in shown and "flash-error" in shown


def test_the_reading_list_and_the_reports_list_in_chinese(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    draft = make_preliminary_report(db_session, demo, [(0, 0, 12, 12)])
    signed = _signed_report(db_session, demo)
    db_session.commit()
    sign_in(client, "radiologist")
    choose_language(client, "zh_CN", "/reading")

    reading = client.get("/reading").get_data(as_text=True)
    assert "阅片列表" in reading and "立即 > 尽快 > 紧急 > 常规" in reading.replace("&gt;", ">")
    assert "AI：紧急" in reading, "a 12 mm finding makes the AI flag it"
    assert "12 mm" in reading and "年" in reading
    assert english_left_in(reading, _record_data(db_session, draft)) == []

    reports = client.get("/reports").get_data(as_text=True)
    assert ">已签发<" in reports and ">草稿<" in reports and "签发时间" in reports
    assert "AI 分析：标出 1 处可疑异常待审核（最大 12 mm）" in reports and "右肺上叶结节 8 mm，建议随访。" in reports
    assert english_left_in(reports, _record_data(db_session, draft) + _record_data(db_session, signed)) == []


def test_in_english_the_confidence_is_a_word_and_a_percentage_with_its_meaning(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)], confidence=0.93)
    db_session.commit()
    sign_in(client, "radiologist")
    page = client.get(f"/reports/{report.id}", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "AI confidence:</abbr> high (93%)" in page
    assert 'title="How sure the AI model is that this is a real finding' in page
    assert "Decision: <span" in page and "not decided yet" in page


def test_the_summary_a_radiologist_signs_is_in_the_language_they_read_the_preview_in(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    db_session.commit()
    sign_in(client, "radiologist")
    choose_language(client, "zh_CN", f"/reports/{report.id}")
    token = csrf_token_of(client.get(f"/reports/{report.id}").get_data(as_text=True))

    preview = client.post(f"/reports/{report.id}", data={"action": "sign", "csrf_token": token}).get_data(as_text=True)
    assert "签署报告" in preview and "放射科医生确认 1 处异常（最大 8 mm）。" in preview
    assert "发现 " in preview and "第 1 层，8 mm（已接受）" in preview
    signed = client.post(f"/reports/{report.id}", data={"action": "sign", "confirm": "yes", "csrf_token": token})
    assert signed.status_code == 302
    assert "报告已签署" in client.get(signed.headers["Location"]).get_data(as_text=True)
    db_session.expire_all()
    stored = db_session.get(DiagnosticReport, report.id)
    assert stored is not None and stored.conclusion == "放射科医生确认 1 处异常（最大 8 mm）。"


def test_an_addendum_is_told_to_the_clinician_and_the_patient_each_in_their_own_language(
    app: Flask, demo: DemoSeed, db_session: Session, smtp_server: Mailbox, mail_through: Any,
) -> None:
    report = _signed_report(db_session, demo)
    clinician, patient = demo.users["clinician"], demo.users["patient"]
    clinician.locale, clinician.email = "zh_CN", "clinician@hillside.example.org"
    patient.locale = "en"  # mailed at their record's address
    addendum = add_addendum(db_session, demo.users["radiologist"], report.id, "与前片比较：无变化。")
    mail_through(smtp_server.port)
    with app.test_request_context("/", headers={"Accept-Language": "en"}):  # whoever runs it reads English
        assert notify_referrer_of_amendment(db_session, addendum.id) == 2
        assert notify_referrer_of_amendment(db_session, addendum.id) == 0, "a redelivered event tells nobody twice"
    db_session.commit()  # the mail jobs run after the commit

    told = db_session.scalars(select(Notification).where(Notification.event_key == f"report-amended:{addendum.id}")
                              .order_by(Notification.id)).all()
    assert [(n.user_id, n.kind) for n in told] == [(clinician.id, "report_amended"), (patient.id, "report_updated")]
    assert addendum.referrer_notified_at is not None
    [chinese] = smtp_server.to("clinician@hillside.example.org")
    [english] = smtp_server.to(demo.patient.email or "")
    assert chinese["Subject"] == "影像报告已修订" and "请打开报告查看" in chinese.get_content()
    assert english["Subject"] == "Your imaging report was updated"
    for mail in (chinese, english):  # no clinical content in a mail: the addendum is on the report's page
        assert "无变化" not in mail.get_content() and "结节" not in mail.get_content()
    with app.test_request_context("/"):
        assert notifications.target_path(told[0]) == f"/reports/{report.id}"


def test_the_model_page_and_its_drift_table_in_chinese(client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    _, north, south = three_centres(db_session, demo)
    sign_in(client, "admin")
    choose_language(client, "zh_CN", "/models")

    page = client.get("/models").get_data(as_text=True)

    assert "AI 模型版本" in page and "各中心的漂移" in page and ">已启用<" in page
    south_row = page.split(f'<td data-label="影像中心">{south.name}</td>')[1].split("</tr>")[0]
    assert "有漂移" in south_row and "接受率 0.50，平台其余部分为 0.80（z -4." in south_row
    north_row = page.split(f'<td data-label="影像中心">{north.name}</td>')[1].split("</tr>")[0]
    assert "无漂移" in north_row
    # Model names, versions, metric keys and the decisions the registry recorded are the record's data.
    data = [*db_session.scalars(select(Organization.name))] + [
        text for version in db_session.scalars(select(ModelVersion)) for text in (
            version.name, version.version, version.label, version.decision_reason, version.weights_sha256, version.weights_sha256[:16],
            *version.metrics)]
    assert english_left_in(page, data) == []


def test_a_partner_and_an_administrator_handle_a_package_in_chinese(
    client: FlaskClient, demo: DemoSeed, db_session: Session, tmp_path: Path,
) -> None:
    sign_in(client, "partner")
    choose_language(client, "zh_CN", "/model-packages")
    token = csrf_token_of(client.get("/model-packages").get_data(as_text=True))
    refused = client.post("/model-packages", data={"csrf_token": token}, follow_redirects=True)
    assert "请选择要上传的模型包 zip 文件" in refused.get_data(as_text=True)
    page = client.post("/model-packages", data={
        "csrf_token": token, "package": (io.BytesIO(make_classifier_package(tmp_path).read_bytes()), "package.zip"),
    }, content_type="multipart/form-data", follow_redirects=True).get_data(as_text=True)
    assert "已收到并校验 nodule-classifier 1.0.0，接下来将运行检查。" in page and ">待审批<" in page

    package = db_session.scalars(select(ModelPackage)).one()
    detail = client.get(f"/model-packages/{package.id}").get_data(as_text=True)
    assert "已在 3 例参考检查上通过" in detail and "€12.00；合作方分成 70.00%" in detail

    client.post("/logout", data={"csrf_token": csrf_token_of(detail)})
    sign_in(client, "admin")  # no choice saved on this account: the switch's cookie in this browser chooses
    token = csrf_token_of(client.get(f"/model-packages/{package.id}").get_data(as_text=True))
    asked = client.post(f"/model-packages/{package.id}/approve", data={"csrf_token": token}).get_data(as_text=True)
    assert "批准 nodule-classifier 1.0.0？之后路由规则可能会在患者的检查上运行它。" in asked
    done = client.post(f"/model-packages/{package.id}/approve", data={"csrf_token": token, "confirmed": "yes"},
                       follow_redirects=True).get_data(as_text=True)
    assert "nodule-classifier 1.0.0：已批准。" in done
