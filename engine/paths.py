"""Which files a dashboard user may make the server open or write: the data folder and an allow-list.

The dashboard is a web page; whoever can reach it must not be able to read or write arbitrary files
of the machine through a path box. Paths set by whoever started the server (environment variables)
are trusted; paths typed in a page must lie under ``data/`` or a folder in DEPTHSCOPE_ALLOWED_PATHS.

One base for relative paths: the project folder (never the server's working folder), and the path that
was checked is the path that is used: :func:`check_allowed` and :func:`model_source` return the
resolved absolute path, and callers hand that object on, not the text that was typed.
Torch-free: pages import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import DepthScopeError

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
# The embedded models' names, and where the demo model is built (one place for torch-free and torch code).
DEFAULT_MODEL = "smollm2-135m-instruct"
DEMO_MODEL = "depthscope-demo"
DEMO_MODEL_DIR = DATA_DIR / "models" / DEMO_MODEL
ACTIVATIONS_DIR = DATA_DIR / "activations"  # cached residual streams, keyed by model and prompt set
UPLOADS_FOLDER = "uploads"  # prompt CSVs uploaded in the dashboard live in data/uploads/, always
LENS_DIR = DATA_DIR / "lenses"  # tuned lenses, one per model content hash (engine.lenses)
ENV_ALLOWED = "DEPTHSCOPE_ALLOWED_PATHS"
TRUSTED_ENV_PATHS = ("DEPTHSCOPE_DB", "DEPTHSCOPE_MODEL", "DEPTHSCOPE_ACTIVATIONS")


class PathNotAllowedError(DepthScopeError, ValueError):
    pass


def resolve(path: str | Path) -> Path:
    """The absolute path, symlinks resolved; a relative path starts at the project folder (one base for
    every check and every use, whatever folder the server was started in)."""
    candidate = Path(path).expanduser()
    return (candidate if candidate.is_absolute() else REPO_ROOT / candidate).resolve()


_as_absolute = resolve


def uploads_dir() -> Path:
    """Where the dashboard saves uploaded prompt CSVs: inside data/, whatever database is open."""
    return DATA_DIR / UPLOADS_FOLDER


def allowed_roots() -> list[Path]:
    """data/, each folder of DEPTHSCOPE_ALLOWED_PATHS, and the folders of the server's own settings."""
    roots = [DATA_DIR.resolve()]
    roots += [_as_absolute(p) for p in os.environ.get(ENV_ALLOWED, "").split(os.pathsep) if p.strip()]
    for name in TRUSTED_ENV_PATHS:
        value = os.environ.get(name, "").strip()
        if value and looks_like_path(value):
            target = _as_absolute(value)
            roots.append(target if target.is_dir() else target.parent)
    return roots


def looks_like_path(text: str) -> bool:
    """A hub id ("org/name") is not a file path unless such a file or folder exists here."""
    text = text.strip()
    return (
        text.startswith(("/", "~", ".", "\\"))
        or text.endswith((".gguf", ".duckdb", ".csv"))
        or (bool(text) and _as_absolute(text).exists())
    )


def check_allowed(path: str | Path, what: str = "path") -> Path:
    """The absolute path, or PathNotAllowedError saying how to allow it. Symlinks are resolved first."""
    target = _as_absolute(path)
    for root in allowed_roots():
        if target == root or root in target.parents:
            return target
    raise PathNotAllowedError(
        f"the {what} {path} is outside the folders the dashboard may open ({DATA_DIR} and the folders in "
        f"{ENV_ALLOWED}). Move it under data/, or restart the dashboard with "
        f"{ENV_ALLOWED}=/its/folder (several separated by '{os.pathsep}')."
    )


def model_source(text: str, what: str = "model path") -> str:
    """What the dashboard hands a model loader for a model name typed in a page or stored in a database:
    an embedded name or a hub id as it is, a path as its checked absolute form (PathNotAllowedError
    outside the allowed folders). A hub-id-like name that the loader would find as a folder relative to
    the server's working folder is refused: relative paths start at the project folder only."""
    text = text.strip()
    if text in (DEFAULT_MODEL, DEMO_MODEL) or not text:
        return text
    if looks_like_path(text):
        return str(check_allowed(text, what))
    if Path(text).expanduser().exists():  # relative to the working folder: a different file than checked
        raise PathNotAllowedError(
            f"the {what} {text} is neither under the project folder {REPO_ROOT} nor a hub id; relative "
            "paths start at the project folder. Give the full path (inside data/ or the allowed folders)."
        )
    return text
