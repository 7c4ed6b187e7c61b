"""Where an uploaded prompt CSV is kept: a name made from the file's own name and its content, so two
different files uploaded under one name never overwrite each other (each is its own prompt set), the
same file uploaded twice is one file, and the name the user gave can still be shown."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

from engine.types import Prompt

from .csvfiles import prompt_set_id

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_CONTENT_SUFFIX = re.compile(r"^(?P<stem>.*)-(?P<content>[0-9a-f]{8})$")


def upload_file_name(filename: str, prompts: Sequence[Prompt]) -> str:
    """``<the upload's name, reduced to safe characters>-<8 hex digits of its prompts' content>.csv``.

    The content part hashes the parsed prompts (ids, texts, labels, categories, contexts, tags), so a file
    re-saved in another encoding or with other line endings is the same upload."""
    stem = _UNSAFE.sub("-", PurePath(filename.replace("\\", "/")).stem).strip("-")[:80] or "upload"
    return f"{stem}-{prompt_set_id(prompts)[:8]}.csv"


def upload_display_name(stored: str) -> str:
    """The name to show for an uploaded set's stored file: its original (cleaned) name, without the
    content part (``prompts-1a2b3c4d.csv`` -> ``prompts.csv``)."""
    path = PurePath(stored)
    match = _CONTENT_SUFFIX.match(path.stem)
    return f"{match['stem']}{path.suffix}" if match else path.name


__all__ = ["upload_display_name", "upload_file_name"]
