"""Inputs that used to slip through: Ray sizing that is not a finite number, a judge list naming no judge,
and commands that only add to a database creating one at a mistyped ``--db``. Each is one line naming
the option, exit 2, before Ray or any model starts."""

from __future__ import annotations

import pytest

import engine.executors
import engine.models
from engine.cli import main
from engine.models import ModelLoadError
from engine.store import Store


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test loudly if a command reaches Ray or the model loader."""
    reached: list[str] = []

    def ray(*_args, **_kwargs):
        reached.append("ray")
        raise AssertionError("Ray was started")

    def loader(*_args, **_kwargs):
        reached.append("model")
        raise ModelLoadError("SPY: the command reached the model loader")

    monkeypatch.setattr(engine.executors, "make_executor", ray)
    monkeypatch.setattr(engine.models, "load_model", loader)
    return reached


@pytest.fixture
def existing_db(db_path):
    Store.open(db_path).close()
    return db_path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- Ray sizing

BAD_GPUS = ["inf", "-inf", "nan", "NaN", "1e999", "-1", "-0.5"]


def command_with_ray(command: str, tiny_model_dir, db_path, *sizing: str, ray: bool = True) -> list[str]:
    ray_args = ["--ray", "local"] if ray else []
    if command == "sweep":
        base = [
            "sweep",
            "--model",
            str(tiny_model_dir),
            "--prompts",
            "demo",
            "--layers",
            "2",
            "--db",
            str(db_path),
        ]
    elif command == "probe":
        base = ["probe", "--model", str(tiny_model_dir), "--prompts", "demo", "--no-save"]
    else:
        base = ["judge-stored", "--db", str(db_path)]
    return [*base, *ray_args, *sizing]


@pytest.mark.parametrize("command", ["sweep", "probe", "judge-stored"])
@pytest.mark.parametrize("value", BAD_GPUS)
@pytest.mark.parametrize("ray", [True, False])
def test_gpus_per_worker_must_be_a_finite_number(command, value, ray, tiny_model_dir, existing_db, capsys,
                                                 nothing_starts):  # fmt: skip
    argv = command_with_ray(command, tiny_model_dir, existing_db, f"--gpus-per-worker={value}", ray=ray)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: --gpus-per-worker:") and "finite number" in line, line
    assert nothing_starts == []


@pytest.mark.parametrize(
    "sizing, option",
    [(["--workers", "0"], "--workers"), (["--workers=-3"], "--workers"), (["--chunk", "0"], "--chunk")],
)
def test_workers_and_chunk_are_named_when_refused(sizing, option, tiny_model_dir, existing_db, capsys,
                                                  nothing_starts):  # fmt: skip
    assert main(command_with_ray("sweep", tiny_model_dir, existing_db, *sizing)) == 2
    assert one_error_line(capsys).startswith(f"error: {option}:")
    assert nothing_starts == []


# ---------------------------------------------------------------- judge lists


@pytest.mark.parametrize(
    "judges, words",
    [
        (",,", "names no judge"),
        ("", "names no judge"),
        (" , ", "names no judge"),
        ("keyword,,harmbench", "empty entry"),
        ("keyword,", "empty entry"),
        (",keyword", "empty entry"),
        ("kw", "unknown judge 'kw'"),
        ("keyword,harmbnch", "unknown judge 'harmbnch'"),
        ("human", "label"),
        ("harmbench", "--judge-model"),
    ],
)
@pytest.mark.parametrize("command", ["sweep", "judge-stored"])
def test_judge_lists_naming_no_usable_judge_are_refused(judges, words, command, tiny_model_dir, existing_db,
                                                        capsys, nothing_starts):  # fmt: skip
    argv = command_with_ray(command, tiny_model_dir, existing_db, f"--judges={judges}", ray=False)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: --judges:") and words in line, line
    assert nothing_starts == []
    with Store.open(existing_db, read_only=True) as store:
        assert store.list_runs().empty  # nothing ran


def test_repeated_judges_run_once(existing_db, capsys):
    assert main(["judge-stored", "--db", str(existing_db), "--judges", "keyword, keyword", "--json"]) == 0
    assert '"judges": [\n  "keyword"\n ]' in capsys.readouterr().out


# ---------------------------------------------------------------- only a sweep creates a database


@pytest.mark.parametrize(
    "argv",
    [
        ["judge-stored"],
        ["judge-stored", "--judges", "keyword", "--json"],
        ["label", "--completion-key", "abc", "--label", "harmful"],
        ["report"],
        ["report", "--json"],
        ["export", "--out", "OUT"],
    ],
    ids=["judge-stored", "judge-stored-json", "label", "report", "report-json", "export"],
)
@pytest.mark.parametrize("where", ["missing file", "missing folder"])
def test_commands_that_only_read_or_add_never_create_a_database(
    argv, where, tmp_path, capsys, nothing_starts
):
    db = tmp_path / ("typo.duckdb" if where == "missing file" else "no-such-folder/typo.duckdb")
    argv = [str(tmp_path / "out.csv") if a == "OUT" else a for a in argv]
    assert main([*argv, "--db", str(db)]) == 2
    line = one_error_line(capsys)
    assert str(db) in line and "does not exist" in line, line
    assert not db.exists() and not db.parent.joinpath("typo.duckdb.wal").exists()
    assert where == "missing file" or not db.parent.exists()
    assert nothing_starts == []


def test_judge_stored_with_ray_refuses_a_missing_database_before_ray_starts(tmp_path, capsys, nothing_starts):
    db = tmp_path / "typo.duckdb"
    assert main(["judge-stored", "--db", str(db), "--ray", "local"]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert nothing_starts == [] and not db.exists()


def test_judge_stored_and_label_still_work_on_an_existing_database(existing_db, capsys):
    assert main(["judge-stored", "--db", str(existing_db)]) == 0
    assert "0 new verdicts" in capsys.readouterr().err
    assert main(["label", "--db", str(existing_db), "--completion-key", "nope", "--label", "harmful"]) == 2
    assert "no completion with key" in capsys.readouterr().err  # the database was opened, the key is missing


def test_a_sweep_still_creates_its_database(tiny_model_dir, tmp_path):
    db = tmp_path / "new" / "fresh.duckdb"
    argv = ["sweep", "--model", str(tiny_model_dir), "--prompts", "demo", "--limit", "2", "--layers", "2",
            "--max-new-tokens", "2", "--db", str(db)]  # fmt: skip
    assert main(argv) == 0
    assert db.exists()
