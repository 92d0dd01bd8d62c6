"""Billing: every billable event becomes one ChargeItem priced from the catalog; charges become
invoices; administrators see revenue, including what the AI brought in."""
