"""Judges: one protocol (``name``, ``version``, batched ``judge``), one file per judge.

Importing this package does not import torch; only running the HarmBench classifier does.
"""

from __future__ import annotations

from .base import Judge, JudgeItem, parse_tags
from .degenerate import degeneracy_reason, is_degenerate
from .harmbench import (
    COPYRIGHT_NOTE,
    DEFAULT_CLASSIFIERS,
    DEFAULT_HARMBENCH_VERSION,
    HARMBENCH_VERSIONS,
    LLAMA2_CLS_PROMPT,
    MISTRAL_CLS_PROMPT,
    NUM_TOKENS,
    HarmBenchJudge,
    clip_generation,
    format_classifier_prompt,
    is_contextual,
    is_copyright,
    parse_classifier_answer,
)
from .human import HUMAN_LABELS, HUMAN_VERSION, HumanJudge, human_verdict
from .keyword import (
    DEFAULT_KEYWORD_VERSION,
    JAILBREAKBENCH_TEST_PREFIXES,
    KEYWORD_VERSIONS,
    LLM_ATTACKS_TEST_PREFIXES,
    KeywordJudge,
    KeywordList,
    is_jailbroken_by_keywords,
    matched_phrases,
)
from .names import HARMBENCH, HUMAN, JUDGE_ORDER, KEYWORD
from .registry import available_judges, get_judge

__all__ = [
    "HARMBENCH",
    "HUMAN",
    "JUDGE_ORDER",
    "KEYWORD",
    "COPYRIGHT_NOTE",
    "DEFAULT_CLASSIFIERS",
    "DEFAULT_HARMBENCH_VERSION",
    "DEFAULT_KEYWORD_VERSION",
    "HARMBENCH_VERSIONS",
    "HUMAN_LABELS",
    "HUMAN_VERSION",
    "JAILBREAKBENCH_TEST_PREFIXES",
    "KEYWORD_VERSIONS",
    "LLAMA2_CLS_PROMPT",
    "LLM_ATTACKS_TEST_PREFIXES",
    "MISTRAL_CLS_PROMPT",
    "NUM_TOKENS",
    "HarmBenchJudge",
    "HumanJudge",
    "Judge",
    "JudgeItem",
    "KeywordJudge",
    "KeywordList",
    "available_judges",
    "clip_generation",
    "degeneracy_reason",
    "format_classifier_prompt",
    "get_judge",
    "human_verdict",
    "is_contextual",
    "is_copyright",
    "is_degenerate",
    "is_jailbroken_by_keywords",
    "matched_phrases",
    "parse_classifier_answer",
    "parse_tags",
]
