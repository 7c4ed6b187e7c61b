"""Paths typed into the dashboard stay inside data/ or the explicit allow-list."""

from __future__ import annotations

import pytest

from engine.paths import DATA_DIR, ENV_ALLOWED, PathNotAllowedError, check_allowed, looks_like_path


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in (ENV_ALLOWED, "DEPTHSCOPE_DB", "DEPTHSCOPE_MODEL", "DEPTHSCOPE_ACTIVATIONS"):
        monkeypatch.delenv(name, raising=False)


def test_data_folder_is_allowed_and_the_rest_is_not(tmp_path):
    assert check_allowed("data/depthscope.duckdb") == DATA_DIR.resolve() / "depthscope.duckdb"
    for outside in ("/etc/passwd", "data/../../secret.duckdb", str(tmp_path / "x.duckdb"), "~/.ssh/id_rsa"):
        with pytest.raises(PathNotAllowedError, match=ENV_ALLOWED):
            check_allowed(outside, "database file")


def test_symlink_out_of_data_is_refused(tmp_path):
    link = DATA_DIR / "test-link-out.duckdb"
    link.unlink(missing_ok=True)
    link.symlink_to(tmp_path / "target.duckdb")
    try:
        with pytest.raises(PathNotAllowedError):
            check_allowed(link)
    finally:
        link.unlink()


def test_allow_list_and_server_settings_open_more(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv(ENV_ALLOWED, str(models))
    assert check_allowed(models / "llama") == (models / "llama").resolve()
    monkeypatch.setenv("DEPTHSCOPE_DB", str(tmp_path / "db" / "x.duckdb"))
    assert check_allowed(tmp_path / "db" / "x.duckdb")
    with pytest.raises(PathNotAllowedError):
        check_allowed(tmp_path / "elsewhere")


def test_hub_ids_are_not_paths():
    assert not looks_like_path("cais/HarmBench-Llama-2-13b-cls")
    assert looks_like_path("/models/x") and looks_like_path("./x") and looks_like_path("model.gguf")
