"""Which files a dashboard user may make the server open: the data folder and an explicit allow-list.

The dashboard is a web page; whoever can reach it must not be able to read or write arbitrary files
of the machine through a path box. Paths set by whoever started the server (environment variables)
are trusted; paths typed in a page must lie under ``data/`` or a folder in DEPTHSCOPE_ALLOWED_PATHS.
Torch-free: pages import it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
# The embedded models' names, and where the demo model is built (one place for torch-free and torch code).
DEFAULT_MODEL = "smollm2-135m-instruct"
DEMO_MODEL = "depthscope-demo"
DEMO_MODEL_DIR = DATA_DIR / "models" / DEMO_MODEL
LENS_DIR = DATA_DIR / "lenses"  # tuned lenses, one per model content hash (engine.tuned_lens)
ENV_ALLOWED = "DEPTHSCOPE_ALLOWED_PATHS"
TRUSTED_ENV_PATHS = ("DEPTHSCOPE_DB", "DEPTHSCOPE_MODEL", "DEPTHSCOPE_ACTIVATIONS")


class PathNotAllowedError(ValueError):
    pass


def _as_absolute(path: str | Path) -> Path:
    candidate = Path(path).expanduser()
    return (candidate if candidate.is_absolute() else REPO_ROOT / candidate).resolve()


def allowed_roots() -> list[Path]:
    """data/, each folder of DEPTHSCOPE_ALLOWED_PATHS, and the folders of the server's own settings."""
    roots = [DATA_DIR.resolve()]
    roots += [_as_absolute(p) for p in os.environ.get(ENV_ALLOWED, "").split(os.pathsep) if p.strip()]
    for name in TRUSTED_ENV_PATHS:
        value = os.environ.get(name, "").strip()
        if value and (Path(value).expanduser().exists() or value.startswith(("/", "~", "."))):
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
