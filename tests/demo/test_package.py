"""The demo is a client of the core, not part of it: the app and the stages load without it, and
only the `hospital` command's composition root (`hospital.cli`) names it."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_after(statement: str) -> list[str]:
    # A fresh interpreter: this test process has long since imported everything.
    code = f"import json, sys; {statement}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'demo')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def test_the_app_and_its_stages_load_without_the_demo() -> None:
    assert loaded_after("from hospital.app import create_app; create_app({'TESTING': True})") == []


def test_the_hospital_command_registers_the_demo() -> None:
    assert "demo.cli" in loaded_after("from hospital.cli import cli; assert 'demo' in cli.commands")
