"""Where the dashboard's files are: the database, the model, the activation cache, the uploads, and which
paths typed in a page may be opened or written at all (data/ and the allow-list, see engine.paths).

Every path is resolved once, against the project folder, and the resolved absolute path is what the
pages pass on (to the store, the model loader, the judges): never the text that was typed."""

from __future__ import annotations

import os
from pathlib import Path

from engine import paths
from engine.modelfiles import DEFAULT_MODEL
from engine.paths import ACTIVATIONS_DIR, PathNotAllowedError, check_allowed, looks_like_path, model_source
from engine.store import DEFAULT_DB_PATH, StoreError

# Set by whoever starts the server (trusted, see engine.paths.TRUSTED_ENV_PATHS).
ENV_DB = "DEPTHSCOPE_DB"
ENV_MODEL = "DEPTHSCOPE_MODEL"
ENV_ACTIVATIONS = "DEPTHSCOPE_ACTIVATIONS"


def default_db() -> str:
    return os.environ.get(ENV_DB) or str(DEFAULT_DB_PATH)


def default_model() -> str:
    """The server's model setting (trusted), a path resolved against the project folder like any other."""
    value = (os.environ.get(ENV_MODEL) or DEFAULT_MODEL).strip()
    return str(paths.resolve(value)) if looks_like_path(value) else value


def resolve_db(text: str) -> Path:
    return paths.resolve(text.strip() or default_db())


def activations_dir() -> Path:
    return paths.resolve(os.environ.get(ENV_ACTIVATIONS) or ACTIVATIONS_DIR)


def uploads_dir() -> Path:
    return paths.uploads_dir()


def checked_source(text: str, what: str) -> tuple[str | None, str | None]:
    """(what to load, None), or (None, why not): a path as its allowed absolute form, a name as is."""
    try:
        return model_source(text, what), None
    except PathNotAllowedError as exc:
        return None, str(exc)


def allowed_db(db: str) -> None:
    """Every way the pages open a database passes here: only data/ and the allow-list."""
    try:
        check_allowed(db, "database file")
    except PathNotAllowedError as exc:
        raise StoreError(str(exc)) from None


# Examples shown in path boxes and help: folders the default allow-list accepts (inside data/), so a
# user who copies one is not refused; ALLOW_OTHER_FOLDERS says how to open a folder elsewhere.
EXAMPLE_MODEL_DIR = str(paths.DATA_DIR / "models" / "Llama-2-7b-chat-hf")
EXAMPLE_CLASSIFIER_DIR = str(paths.DATA_DIR / "models" / "harmbench-cls")
ALLOW_OTHER_FOLDERS = (
    f"A folder outside data/ must be allowed when the dashboard starts: "
    f"`{paths.ENV_ALLOWED}=/models make run` (several folders separated by '{os.pathsep}')."
)
