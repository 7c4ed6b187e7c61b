"""Shared fixtures: tiny random models and tokenizers (engine.tiny), a temp DuckDB path per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.tiny import TINY_CONFIGS, build_tiny_model, build_tiny_tokenizer  # noqa: E402

N_LAYERS = 6
REPO_ROOT = Path(__file__).resolve().parent.parent
__all__ = [
    "TINY_CONFIGS",
    "N_LAYERS",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "save_tiny_checkpoint",
    "child_env",
]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for an ``engine`` child process: the repository first on PYTHONPATH, whatever
    the parent had after it (an install outside the venv keeps working), offline."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny 8-layer Llama checkpoint folder (model + tokenizer), as a user would point at."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama", tiny_tokenizer, n_layers=8)


def save_tiny_checkpoint(path: Path, arch: str, tokenizer, n_layers: int = N_LAYERS) -> Path:
    build_tiny_model(arch, n_layers=n_layers).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def db_path(tmp_path) -> Path:
    """A fresh DuckDB file location per test."""
    return tmp_path / "test.duckdb"


@pytest.fixture(scope="module")
def ray_cluster():
    """A private 2-CPU Ray cluster for one test module (Ray tests only: importing Ray is slow)."""
    ray = pytest.importorskip("ray")
    from engine.executors.ray_executor import connect

    started = connect("local", num_cpus=2, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
