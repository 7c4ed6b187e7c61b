"""The judges by name: which exist, their versions, and building one.

Imports every judge module; none of them imports this one (base ← judges ← registry, no cycle).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import UserInputError

from .base import Judge
from .harmbench import DEFAULT_HARMBENCH_VERSION, HARMBENCH_VERSIONS, HarmBenchJudge
from .human import HUMAN_VERSION, HumanJudge
from .keyword import DEFAULT_KEYWORD_VERSION, KEYWORD_VERSIONS, KeywordJudge
from .names import HARMBENCH, HUMAN, JUDGE_ORDER, KEYWORD


def available_judges() -> dict[str, tuple[str, ...]]:
    """Judge name -> its known versions, the default version first."""
    return {
        KEYWORD: _default_first(DEFAULT_KEYWORD_VERSION, KEYWORD_VERSIONS),
        HARMBENCH: _default_first(DEFAULT_HARMBENCH_VERSION, HARMBENCH_VERSIONS),
        HUMAN: (HUMAN_VERSION,),
    }


def _default_first(default: str, versions: Sequence[str]) -> tuple[str, ...]:
    return (default, *(v for v in versions if v != default))


def get_judge(name: str, *, judge_model: str | None = None, version: str | None = None) -> Judge:
    """Build a judge by name. ``judge_model`` is the classifier path or hub id (harmbench only).

    Loading the HarmBench classifier happens here, so call it once and reuse the judge.
    """
    if name == KEYWORD:
        return KeywordJudge(version or DEFAULT_KEYWORD_VERSION)
    if name == HARMBENCH:
        return HarmBenchJudge.from_pretrained(judge_model, version=version)
    if name == HUMAN:
        if version not in (None, HUMAN_VERSION):
            raise UserInputError(f"unknown human judge version {version!r}; known: {HUMAN_VERSION!r}")
        return HumanJudge()
    raise UserInputError(f"unknown judge {name!r}; known judges: {', '.join(JUDGE_ORDER)}")
