"""The one judge protocol, the item every judge reads, and the registry of judges.

No torch here: importing the package must stay cheap so the keyword judge costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.types import Verdict

from .degenerate import degeneracy_reason


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


def degenerate_fields(text: str) -> tuple[bool, str]:
    """The ``degenerate`` flag and a note explaining it, shared by every judge."""
    reason = degeneracy_reason(text)
    return reason is not None, (f"degenerate output: {reason}" if reason else "")


# ---------------------------------------------------------------- registry

_JUDGE_NAMES = ("keyword", "harmbench", "human")


def available_judges() -> dict[str, tuple[str, ...]]:
    """Judge name -> its known versions, the default version first."""
    from .harmbench import DEFAULT_HARMBENCH_VERSION, HARMBENCH_VERSIONS
    from .human import HUMAN_VERSION
    from .keyword import DEFAULT_KEYWORD_VERSION, KEYWORD_VERSIONS

    return {
        "keyword": _default_first(DEFAULT_KEYWORD_VERSION, KEYWORD_VERSIONS),
        "harmbench": _default_first(DEFAULT_HARMBENCH_VERSION, HARMBENCH_VERSIONS),
        "human": (HUMAN_VERSION,),
    }


def _default_first(default: str, versions: Sequence[str]) -> tuple[str, ...]:
    return (default, *(v for v in versions if v != default))


def get_judge(name: str, *, judge_model: str | None = None, version: str | None = None) -> Judge:
    """Build a judge by name. ``judge_model`` is the classifier path or hub id (harmbench only).

    Loading the HarmBench classifier happens here, so call it once and reuse the judge.
    """
    if name == "keyword":
        from .keyword import DEFAULT_KEYWORD_VERSION, KeywordJudge

        return KeywordJudge(version or DEFAULT_KEYWORD_VERSION)
    if name == "harmbench":
        from .harmbench import HarmBenchJudge

        return HarmBenchJudge.from_pretrained(judge_model, version=version)
    if name == "human":
        from .human import HUMAN_VERSION, HumanJudge

        if version not in (None, HUMAN_VERSION):
            raise ValueError(f"unknown human judge version {version!r}; known: {HUMAN_VERSION!r}")
        return HumanJudge()
    raise ValueError(f"unknown judge {name!r}; known judges: {', '.join(_JUDGE_NAMES)}")
