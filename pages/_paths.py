"""Where the dashboard's files are: the database, the model, the activation cache, and which paths
typed in a page may be opened at all (data/ and the allow-list, see engine.paths)."""

from __future__ import annotations

import os
from pathlib import Path

from engine.modelfiles import DEFAULT_MODEL
from engine.paths import ACTIVATIONS_DIR, REPO_ROOT, PathNotAllowedError, check_allowed, looks_like_path
from engine.store import DEFAULT_DB_PATH, StoreError

# Set by whoever starts the server (trusted, see engine.paths.TRUSTED_ENV_PATHS).
ENV_DB = "DEPTHSCOPE_DB"
ENV_MODEL = "DEPTHSCOPE_MODEL"
ENV_ACTIVATIONS = "DEPTHSCOPE_ACTIVATIONS"


def default_db() -> str:
    return os.environ.get(ENV_DB) or str(DEFAULT_DB_PATH)


def default_model() -> str:
    return os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def resolve_db(text: str) -> Path:
    path = Path(text.strip() or default_db()).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def activations_dir() -> Path:
    return Path(os.environ.get(ENV_ACTIVATIONS) or ACTIVATIONS_DIR)


def path_problem(text: str, what: str) -> str | None:
    """Why a path typed in a page may not be opened (outside data/ and the allow-list), else None."""
    if not looks_like_path(text):
        return None  # a hub id or a name, not a file of this machine
    try:
        check_allowed(text, what)
    except PathNotAllowedError as exc:
        return str(exc)
    return None


def allowed_db(db: str) -> None:
    """Every way the pages open a database passes here: only data/ and the allow-list."""
    try:
        check_allowed(db, "database file")
    except PathNotAllowedError as exc:
        raise StoreError(str(exc)) from None
