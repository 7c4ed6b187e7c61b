"""The one judge protocol, the item every judge reads, and the helpers every judge shares.

Imports no judge (the registry in ``registry.py`` does), so judges import this without a cycle. No torch
here: importing the package must stay cheap so the keyword judge costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from engine.types import Verdict

from .degenerate import DEGENERACY_VERSION, degeneracy_reason


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees of one completion: the behaviour asked for and the text generated."""

    completion_key: str
    behavior: str  # the prompt / HarmBench "Behavior" text
    completion: str  # the generated text
    context: str = ""  # HarmBench ContextString, "" if none
    tags: str = ""  # HarmBench Tags string (e.g. "context, hash_check"), "" if none

    @property
    def tag_list(self) -> tuple[str, ...]:
        return parse_tags(self.tags)


@runtime_checkable
class Judge(Protocol):
    """Every judge: a name, a version (part of the cache key) and a batched ``judge``."""

    name: str
    version: str

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


def parse_tags(tags: str) -> tuple[str, ...]:
    """HarmBench writes tags as "a, b, c" (it splits on ", "); we also accept "a,b" and stray spaces."""
    return tuple(tag.strip() for tag in tags.split(",") if tag.strip())


def join_notes(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


DEGENERATE_NOTE_PREFIX = "degenerate output: "


def degenerate_fields(text: str) -> tuple[bool, str]:
    """The ``degenerate`` flag and a note explaining it, shared by every judge (detector
    ``DEGENERACY_VERSION``, which every verdict records beside the flag)."""
    reason = degeneracy_reason(text)
    return reason is not None, (f"{DEGENERATE_NOTE_PREFIX}{reason}" if reason else "")


def with_current_degeneracy(verdict: Verdict, text: str) -> Verdict:
    """``verdict`` with its flag, the flag's note and the detector version re-computed from ``text``.

    The judge's own decision (``jailbroken``, ``raw``) and the rest of its note are kept: the flag
    depends only on the completion text, so a stale flag is refreshed without re-running the judge.
    """
    degenerate, degenerate_note = degenerate_fields(text)
    kept = [part for part in verdict.note.split("; ") if part and not part.startswith(DEGENERATE_NOTE_PREFIX)]
    return replace(
        verdict,
        degenerate=degenerate,
        note=join_notes(*kept, degenerate_note),
        degeneracy_version=DEGENERACY_VERSION,
    )
