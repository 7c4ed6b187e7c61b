"""``export`` never writes over the database it reads nor over an existing file unless asked, creates
missing folders or says why it cannot, and leaves files with the user's usual permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.cli import main
from engine.store import Store, StoreError
from tests.test_store import PARAMS, PROMPTS, completion


@pytest.fixture
def filled_db(db_path: Path) -> Path:
    with Store.open(db_path) as store:
        store.save_prompt_set("mini", PROMPTS[:2])
        store.save_generations([completion(PROMPTS[0], 8)], params=PARAMS)
    return db_path


def snapshot(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("how", ["same path", "relative detour", "symlink", "hard link"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_export_never_writes_over_the_database(filled_db: Path, tmp_path: Path, how: str, overwrite: bool):
    target = {
        "same path": filled_db,
        "relative detour": tmp_path / "sub" / ".." / filled_db.name,
        "symlink": tmp_path / "results.csv",
        "hard link": tmp_path / "linked.csv",
    }[how]
    (tmp_path / "sub").mkdir(exist_ok=True)
    if how == "symlink":
        target.symlink_to(filled_db)
    if how == "hard link":
        os.link(filled_db, target)
    before = snapshot(filled_db)
    with (
        Store.open(filled_db, read_only=True) as store,
        pytest.raises(StoreError, match="database being read"),
    ):
        store.export(target, fmt="csv", overwrite=overwrite)
    assert snapshot(filled_db) == before


def test_existing_file_is_kept_unless_forced(filled_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    target.write_text("my precious notes\n")
    with Store.open(filled_db, read_only=True) as store:
        with pytest.raises(StoreError, match="already exists.*--force"):
            store.export(target)
        assert target.read_text() == "my precious notes\n"
        store.export(target, overwrite=True)
    assert "completion_key" in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([filled_db.name, "results.csv"])


def test_missing_folders_are_created_and_impossible_ones_explained(filled_db: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with Store.open(filled_db, read_only=True) as store:
        written = store.export(tmp_path / "a" / "b" / "results.parquet")
        assert written.is_file()
        with pytest.raises(StoreError, match=r"cannot create the folder .*not-a-folder/sub"):
            store.export(blocker / "sub" / "results.csv")
        with pytest.raises(StoreError, match="is a folder"):
            store.export(tmp_path / "a", fmt="csv")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_exported_file_has_the_users_usual_permissions(filled_db: Path, tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        with Store.open(filled_db, read_only=True) as store:
            written = store.export(tmp_path / "results.csv")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask


def test_cli_export_refuses_existing_file_and_database_then_forces(filled_db: Path, tmp_path: Path, capsys):
    target = tmp_path / "out.csv"
    target.write_text("keep me\n")
    assert main(["export", "--db", str(filled_db), "--out", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err and target.read_text() == "keep me\n"
    assert main(["export", "--db", str(filled_db), "--out", str(filled_db), "--force"]) == 2
    assert "database being read" in capsys.readouterr().err
    assert main(["export", "--db", str(filled_db), "--out", str(target), "--force"]) == 0
    assert "completion_key" in target.read_text()
