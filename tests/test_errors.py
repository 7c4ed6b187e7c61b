"""One error root: user-facing errors are DepthScopeErrors shown as one sentence; anything else is a bug
that keeps its traceback."""

from __future__ import annotations

import pytest

import engine.cli.generate as generate_cli
from engine.architectures import UnsupportedArchitectureError
from engine.cli import main
from engine.cli.common import UsageError
from engine.datasets import DatasetError
from engine.depths import DepthError
from engine.errors import DepthScopeError, UserInputError, user_message
from engine.executors.base import ClusterUnavailableError, WorkerFailedError
from engine.lenses.files import LensNotFoundError
from engine.models import ModelLoadError
from engine.paths import PathNotAllowedError
from engine.rules import UnknownRuleError
from engine.store.errors import StoreError, StoreLockedError
from engine.types import ParamsError

USER_FACING = [
    UnsupportedArchitectureError,
    UsageError,
    DatasetError,
    DepthError,
    ClusterUnavailableError,
    WorkerFailedError,
    LensNotFoundError,
    ModelLoadError,
    PathNotAllowedError,
    UnknownRuleError,
    StoreError,
    StoreLockedError,
    ParamsError,
    UserInputError,
]


@pytest.mark.parametrize("error", USER_FACING, ids=lambda e: e.__name__)
def test_every_user_facing_error_has_the_one_root(error):
    assert issubclass(error, DepthScopeError)


def test_older_bases_still_catch_them():
    assert issubclass(ParamsError, ValueError) and issubclass(LensNotFoundError, FileNotFoundError)


def test_user_message_tells_a_user_error_from_a_bug():
    assert user_message(UserInputError("give a number")) == "give a number"
    assert user_message(ValueError("index out of range")) is None


def _failing_run(exc: BaseException):
    def run(_args):
        raise exc

    return run


def test_the_cli_prints_a_user_error_as_one_line(monkeypatch, capsys):
    monkeypatch.setattr(generate_cli, "run_generate", _failing_run(UserInputError("give a depth, e.g. 4")))
    assert main(["generate", "--prompt", "Hello", "--layers", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: give a depth, e.g. 4")


def test_the_cli_lets_a_plain_value_error_surface_as_a_bug(monkeypatch):
    monkeypatch.setattr(generate_cli, "run_generate", _failing_run(ValueError("shapes do not match")))
    with pytest.raises(ValueError, match="shapes do not match"):
        main(["generate", "--prompt", "Hello", "--layers", "2"])


def test_pages_name_a_bug_as_one(caplog):
    from pages._display import error_sentence

    assert error_sentence(ParamsError("top_p", "give a number in (0, 1]")) == "give a number in (0, 1]"
    sentence = error_sentence(KeyError("layers"))
    assert "This is a bug" in sentence and "KeyError" in sentence and "layers" not in sentence
    assert any(record.exc_info for record in caplog.records)
