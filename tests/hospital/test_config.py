"""The configuration's folders: an installation (or a test) that names its own instance folder keeps
everything it writes there, unless a folder is set on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from hospital.config import DEFAULT_INSTANCE_DIR, INSTANCE_FOLDERS, load_config


def test_the_instance_folders_move_with_the_instance_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in INSTANCE_FOLDERS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SECRET_KEY", "x")
    config = load_config({"INSTANCE_DIR": tmp_path})
    assert config["DICOM_STORAGE_DIR"] == tmp_path / "dicom"
    assert config["AI_MODELS_DIR"] == tmp_path / "models"
    assert config["AUDIT_ARCHIVE_DIR"] == tmp_path / "audit-archive"
    assert not any(str(config[key]).startswith(str(DEFAULT_INSTANCE_DIR)) for key in INSTANCE_FOLDERS)

    # Set on their own (by the environment or the caller), they stay where they were put.
    monkeypatch.setenv("AI_MODELS_DIR", str(tmp_path / "shared-models"))
    config = load_config({"INSTANCE_DIR": tmp_path / "i", "DICOM_STORAGE_DIR": tmp_path / "nas"})
    assert config["AI_MODELS_DIR"] == tmp_path / "shared-models"
    assert config["DICOM_STORAGE_DIR"] == tmp_path / "nas"
    assert config["AUDIT_ARCHIVE_DIR"] == tmp_path / "i" / "audit-archive"
