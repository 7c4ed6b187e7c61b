"""Records the store reads and writes that are its own (the shared ones live in engine.types)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


@dataclass(frozen=True)
class StoredPromptSet:
    """A prompt set as the database remembers it (not the dataset registry's description of a set)."""

    set_id: str
    name: str
    source: str
    n_prompts: int
    added_at: datetime


@dataclass(frozen=True)
class PromptSetVersion:
    """One version of a stored prompt set: its content, and the name reports show it by (``name`` for the
    current version, ``name@vN`` for an earlier one)."""

    name: str
    shown_name: str
    version: int  # 1, 2, ... in the order the versions first appeared
    n_versions: int
    is_current: bool  # the version saved last (the default in reports and pages)
    n_prompts: int
    content_hash: str | None
    first_added: datetime
    last_saved: datetime


class SavedPromptSet(NamedTuple):
    set_id: str
    new_prompts: int  # prompts not stored before (a prompt may already belong to another set)
    new_set: bool


@dataclass(frozen=True)
class ProbeRecord:
    """One probe evaluated at one layer. ``kind`` names the probe (e.g. "logreg", "diff-of-means")."""

    model_hash: str
    set_id: str
    layer: int
    kind: str
    accuracy: float
    accuracy_std: float | None = None
    auroc: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
