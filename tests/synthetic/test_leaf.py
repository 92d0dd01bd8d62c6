"""`synthetic` is a leaf: the core and the stages may use it for tests and training, never the
other way round, so importing it must pull in nothing of theirs."""

from __future__ import annotations

import subprocess
import sys

PROJECT_PACKAGES = ("hospital", "referrals", "imaging_orders", "ai_services", "followup", "billing", "demo")


def test_synthetic_imports_no_core_or_stage_module() -> None:
    # A fresh interpreter: this test process has long since imported the whole app.
    code = ("import sys, synthetic.phantoms, synthetic.dicom_factory; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {PROJECT_PACKAGES!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
