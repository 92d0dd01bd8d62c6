"""Billing pages in the reader's language, with money in the currency it was charged in: a patient
of the Shanghai centre (priced in yuan) and of Riverside (euros) reads invoices, the pay
confirmation and the receipt in Chinese or English; the billing office reads amounts typed as the
browser's locale writes them and prefills them the same way."""

from __future__ import annotations

import re
from dataclasses import replace

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import jobs
from billing.models import Invoice, Payment
from billing.service import issue_invoice, set_coverage
from hospital.models import Organization
from hospital.seed import DemoSeed
from tests.factories import analysis_completed, make_preliminary_report, study_completed
from tests.pages import choose_language, csrf_token_of, sign_in

CHINESE_DATE = r"\d{4}年\d{1,2}月\d{1,2}日"
# As Babel writes a medium date in English ("Dec 4, 2026"; "4 Dec 2026" should the core choose it).
ENGLISH_DATE = r"(?:[A-Z][a-z]{2} \d{1,2}, \d{4}|\d{1,2} [A-Z][a-z]{2} \d{4})"


def shanghai_centre(db_session: Session) -> Organization:
    centre = db_session.scalar(select(Organization).where(Organization.ae_title == "PUDONG"))
    assert centre is not None, "the demo seeds a centre priced in CNY"
    return centre


def invoice_for_a_scan(db_session: Session, demo: DemoSeed, centre_id: int | None = None,
                       insurer_basis_points: int | None = None) -> Invoice:
    """A CT scan and its AI reading, done at `centre_id` (Riverside when None), invoiced to the
    demo patient: Riverside charges €150.00 + €25.00, the Shanghai centre ¥680.00 + ¥150.00."""
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30)])
    scan, analysis = study_completed(db_session, report.study_id), analysis_completed(db_session, report)
    if centre_id is not None:
        scan, analysis = replace(scan, organization_id=centre_id), replace(analysis, organization_id=centre_id)
    jobs.charge_scan(db_session, scan)
    jobs.charge_ai_analysis(db_session, analysis)
    if insurer_basis_points is not None:
        set_coverage(db_session, demo.users["admin"], demo.patient.id, "Acme Health", "ACME-1", insurer_basis_points)
    invoice = issue_invoice(db_session, demo.users["admin"], demo.patient.id)
    db_session.commit()
    return invoice


def patient_in(client: FlaskClient, locale: str) -> None:
    sign_in(client, "patient")
    choose_language(client, locale, "/invoices")


def test_a_yuan_invoice_reads_in_chinese_from_list_to_receipt(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    invoice = invoice_for_a_scan(db_session, demo, shanghai_centre(db_session).id)
    assert (invoice.currency, invoice.total_minor) == ("CNY", 83000)
    patient_in(client, "zh_CN")

    listed = client.get("/invoices").get_data(as_text=True)
    card = listed.split(f'id="invoice-{invoice.id}"')[1].split("</section>")[0]
    assert f"账单 {invoice.id} · ¥830.00" in card
    assert '<span class="badge wait">待支付</span>' in card
    assert "CT 检查" in card and "¥680.00" in card and "¥150.00" in card
    assert re.search(f"开具于 {CHINESE_DATE}", card)
    assert "支付 ¥830.00" in card and "下一页确认后才会付款。" in card
    assert ">我的账单</a>" in listed  # the menu too
    assert "CNY" not in card and "Invoice" not in card

    confirm = client.get(f"/invoices/{invoice.id}/pay").get_data(as_text=True)
    assert f"<title>支付账单 {invoice.id}" in confirm
    assert "您即将支付 ¥830.00" in confirm and "确认支付 ¥830.00" in confirm
    assert "CT 检查、AI 病灶分析" in confirm  # the services, listed the Chinese way
    assert re.search(f"编号 {invoice.id}，开具于 {CHINESE_DATE}", confirm)
    assert "暂不支付，返回我的账单" in confirm

    form = {"csrf_token": csrf_token_of(confirm), "confirmed": "yes",
            "payment_key": confirm.split('name="payment_key" value="')[1].split('"')[0]}
    paid = client.post(f"/invoices/{invoice.id}/pay", data=form)
    payment = db_session.scalars(select(Payment)).one()
    assert paid.status_code == 302 and payment.amount_minor == 83000
    receipt = client.get(paid.location).get_data(as_text=True)
    assert f"已为账单 {invoice.id} 支付 ¥830.00，谢谢。" in receipt  # the flash
    assert f"<h1>收据 {payment.id}</h1>" in receipt
    assert '<dd id="receipt-amount"><strong>¥830.00</strong></dd>' in receipt
    assert re.search(rf"<dt>付款时间</dt><dd>{CHINESE_DATE} 周.", receipt)
    assert "患者 · 在线支付" in receipt and "web payment" not in receipt
    assert re.search(r'id="receipt-due">¥0.00<', receipt)
    assert "打印或保存此收据" in receipt

    settled = client.get("/invoices").get_data(as_text=True)
    assert '<span class="badge good">已支付</span>' in settled  # green "Paid", not amber "balanced"
    assert "balanced" not in settled and "支付 ¥830.00</button>" not in settled
    assert re.search(f"收据 {payment.id}：{CHINESE_DATE} 支付 ¥830.00", settled)


def test_a_yuan_invoice_in_english_names_the_currency(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    invoice = invoice_for_a_scan(db_session, demo, shanghai_centre(db_session).id)
    patient_in(client, "en")
    listed = client.get("/invoices").get_data(as_text=True)
    # An English reader is told which yuan: CN¥, as Babel writes it outside China.
    assert f"Invoice {invoice.id} · CN¥830.00" in listed and "Pay CN¥830.00" in listed
    confirm = client.get(f"/invoices/{invoice.id}/pay").get_data(as_text=True)
    assert "You are about to pay CN¥830.00" in confirm and "CT 检查, AI 病灶分析" in confirm


def test_a_euro_invoice_in_both_languages_with_the_insurers_share(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    invoice = invoice_for_a_scan(db_session, demo, insurer_basis_points=7000)
    patient_in(client, "zh_CN")
    chinese = client.get(f"/invoices/{invoice.id}/pay").get_data(as_text=True)
    assert "<dt>账单总额</dt><dd>€175.00</dd>" in chinese
    assert "<dt>由您的保险支付</dt><dd>€122.50</dd>" in chinese
    assert "<dt>本次支付</dt><dd><strong>€52.50</strong></dd>" in chinese
    choose_language(client, "en", "/invoices")
    english = client.get(f"/invoices/{invoice.id}/pay").get_data(as_text=True)
    assert "<dt>Invoice total</dt><dd>€175.00</dd>" in english and "Confirm: pay €52.50" in english
    assert re.search(f"Number {invoice.id}, issued {ENGLISH_DATE}", english)

    form = {"csrf_token": csrf_token_of(english), "confirmed": "yes",
            "payment_key": english.split('name="payment_key" value="')[1].split('"')[0]}
    receipt = client.post(f"/invoices/{invoice.id}/pay", data=form, follow_redirects=True).get_data(as_text=True)
    assert f"Paid €52.50 on invoice {invoice.id}. Thank you." in receipt
    assert re.search(r"<dt>Paid on</dt><dd>[A-Z][a-z]{2} \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d ", receipt)
    assert "Patient · paid online" in receipt and 'id="receipt-due">€0.00<' in receipt
    # The patient's share is paid; the insurer's is still open: "your share paid", not "Paid".
    listed = client.get("/invoices").get_data(as_text=True)
    assert '<span class="badge good">Your share paid</span>' in listed


def test_the_office_prefills_and_reads_amounts_as_the_browser_writes_them(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    invoice = invoice_for_a_scan(db_session, demo, insurer_basis_points=7000)
    sign_in(client, "admin")
    german = {"Accept-Language": "de-DE,de;q=0.9"}
    page = client.get("/admin/billing", headers=german).get_data(as_text=True)
    field = re.search(rf'id="amount-{invoice.id}"[^>]*value="([^"]+)"', page)
    assert field is not None and field.group(1) == "122,50"
    assert "€122.50" in page  # amounts shown in the page's language (English; German is not one)
    form = {"csrf_token": csrf_token_of(page), "action": "insurer_payment", "invoice_id": str(invoice.id),
            "payment_key": "k-1", "amount": field.group(1), "confirmed": "yes"}
    done = client.post("/admin/billing", data=form, headers=german, follow_redirects=True).get_data(as_text=True)
    assert f"Insurer payment of €122.50 recorded on invoice {invoice.id}." in done
    assert db_session.scalars(select(Payment)).one().amount_minor == 12250

    chinese = client.get("/admin/billing", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert '<span class="badge wait">未结清</span>' in chinese  # the patient's share is still open
    assert "保险应付" in chinese and "€52.50" in chinese


def test_a_price_typed_wrong_is_refused_in_the_readers_language(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    sign_in(client, "admin")
    choose_language(client, "zh_CN", "/admin/catalog")
    page = client.get("/admin/catalog").get_data(as_text=True)
    assert "价目表" in page and "¥680.00" in page and "€150.00" in page
    assert "（例如 680.00）" in page  # the example is the entry's own price, as it is typed
    entry_id = re.search(r'<tr data-entry-id="(\d+)">\s*<td[^>]*>Shanghai Pudong Imaging Centre', page)
    assert entry_id is not None
    response = client.post("/admin/catalog", data={
        "csrf_token": csrf_token_of(page), "action": "change", "entry_id": entry_id.group(1), "price": "六百",
        "effective_from": "2030-03-01", "confirmed": "yes"})
    assert response.status_code == 422
    assert "“六百”不是有效金额，请按 165.00 的格式填写。" in response.get_data(as_text=True)


def test_revenue_groups_are_words_in_chinese(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    invoice_for_a_scan(db_session, demo, shanghai_centre(db_session).id)
    sign_in(client, "admin")
    choose_language(client, "zh_CN", "/admin/revenue")
    page = client.get("/admin/revenue").get_data(as_text=True)
    by_line = page.split('id="revenue-service_line"')[1].split("</section>")[0]
    assert "按服务类别" in by_line and ">检查</td>" in by_line and ">AI 分析</td>" in by_line
    assert "¥680.00" in by_line and "合计（CNY）" in by_line and "scan" not in by_line.split("<table")[1]
    chart = by_line.split("<svg")[1].split("</svg>")[0]
    assert "检查 (CNY)" in chart and ">AI 相关</text>" in chart and ">其他收入</text>" in chart
    assert "AI-enabled" not in by_line and "revenue" not in chart
    by_month = page.split('id="revenue-month"')[1].split("</section>")[0]
    assert re.search(r">\d{4}年\d{1,2}月</td>", by_month)


def test_a_refused_payment_says_why_in_money_not_minor_units(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    invoice = invoice_for_a_scan(db_session, demo, insurer_basis_points=7000)
    sign_in(client, "admin")
    choose_language(client, "zh_CN", "/admin/billing")
    page = client.get("/admin/billing").get_data(as_text=True)
    form = {"csrf_token": csrf_token_of(page), "action": "insurer_payment", "invoice_id": str(invoice.id),
            "payment_key": "k-2", "amount": "200.00", "confirmed": "yes"}
    refused = client.post("/admin/billing", data=form, follow_redirects=True).get_data(as_text=True)
    assert "此账单保险应付 €122.50，而不是 €200.00。" in refused and "minor units" not in refused
    assert db_session.scalars(select(Payment)).all() == []
    again = client.post("/admin/billing", data={**form, "action": "issue", "patient_id": str(demo.patient.id)},
                        follow_redirects=True).get_data(as_text=True)
    assert f"患者 {demo.patient.id} 在该期间没有可开票的费用。" in again
