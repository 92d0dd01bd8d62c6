"""SQL only with bound parameters: no `text(...)` or driver-level SQL built by f-string, `%`,
`.format()` or concatenation anywhere in the application packages (migrations aside, which run
fixed DDL). Values go in as `:name` parameters or through `select()`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hospital", "referrals", "imaging_orders", "ai_services", "followup", "billing")
RAW_SQL_CALLS = {"text", "exec_driver_sql", "literal_column", "TextClause"}


def _is_built_string(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return not (isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {"format", "join"}:
        return True
    return False


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def test_application_sql_is_never_built_from_strings() -> None:
    offenders = []
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts]
    assert len(files) > 20
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and _called_name(node) in RAW_SQL_CALLS and node.args:
                if _is_built_string(node.args[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:120]}")
    assert not offenders, "SQL built from strings:\n" + "\n".join(offenders)


def test_the_check_catches_what_it_should() -> None:
    bad = ast.parse('text(f"SELECT * FROM patient WHERE mrn = \'{mrn}\'")').body[0].value  # type: ignore[attr-defined]
    good = ast.parse('text("SELECT * FROM patient WHERE mrn = :mrn")').body[0].value  # type: ignore[attr-defined]
    assert _is_built_string(bad.args[0]) and not _is_built_string(good.args[0])
