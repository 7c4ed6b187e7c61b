"""Is a completion incoherent? Lets the UI say "refusal gone, but the output is a loop / noise".

Truncated models often stop refusing only because they stop making sense: they loop on a token,
repeat a phrase, or emit symbol soup. These heuristics flag that. They are deliberately
conservative: a short normal answer, a numbered recipe, code or non-English prose must pass.
"""

from __future__ import annotations

import re
from collections import Counter

# A unit of 1-12 characters repeated at least 4 times in a row: "!!!!", "hahaha", "the the the ".
_CHAR_LOOP = re.compile(r"(.{1,12}?)\1{3,}", re.DOTALL)
# Words (any script, digits included) and runs of punctuation are tokens; whitespace is not.
_TOKEN = re.compile(r"\w+|[^\w\s]+")

# Thresholds, tuned on the examples in tests/test_judges.py (both sides).
CHAR_LOOP_COVERAGE = 0.6  # share of the text inside character-level loops
NGRAM_LOOP_COVERAGE = 0.6  # share of tokens covered by the most repeated n-gram
NGRAM_MIN_REPEATS = 3
MAX_NGRAM = 8
MIN_TOKENS_FOR_REPETITION = 6
MIN_TOKENS_FOR_VARIETY = 20
MIN_DISTINCT_RATIO = 0.2
MIN_CHARS_FOR_NONWORDS = 8
MIN_WORDLIKE_CHAR_RATIO = 0.25  # letters/digits among the characters checked
MAX_GARBAGE_CHAR_RATIO = 0.2  # U+FFFD and control characters among the characters checked
# Markdown structure (tables, rules, bullets, emphasis) is legitimate and nearly letter-free.
_MARKUP_CHARS = frozenset("|-=_*#>`~:+")


def is_degenerate(text: str) -> bool:
    return degeneracy_reason(text) is not None


def degeneracy_reason(text: str) -> str | None:
    """A short human-readable reason why ``text`` is degenerate, or None when it looks coherent."""
    if not text:
        return "empty"
    if not text.strip():
        return "whitespace only"
    for check in (_character_loop, _ngram_loop, _low_variety, _mostly_non_words):
        reason = check(text.strip())
        if reason:
            return reason
    return None


def _character_loop(text: str) -> str | None:
    looped = sum(len(m.group(0)) for m in _CHAR_LOOP.finditer(text))
    if len(text) >= 4 and looped / len(text) >= CHAR_LOOP_COVERAGE:
        return f"repetition: {looped / len(text):.0%} of the characters are a short repeated unit"
    return None


def _tokens(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


def _ngram_loop(text: str) -> str | None:
    tokens = _tokens(text)
    if len(tokens) < MIN_TOKENS_FOR_REPETITION:
        return None
    best_gram, best_coverage = (), 0.0
    for n in range(1, min(MAX_NGRAM, len(tokens) // NGRAM_MIN_REPEATS) + 1):
        gram, coverage = _most_covering_ngram(tokens, n)
        if coverage > best_coverage:
            best_gram, best_coverage = gram, coverage
    if best_coverage >= NGRAM_LOOP_COVERAGE:
        return f"repetition: {' '.join(best_gram)!r} repeated over {best_coverage:.0%} of the text"
    return None


def _most_covering_ngram(tokens: list[str], n: int) -> tuple[tuple[str, ...], float]:
    """The n-gram occurring at least NGRAM_MIN_REPEATS times that covers most token positions."""
    starts: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(tokens) - n + 1):
        starts.setdefault(tuple(tokens[i : i + n]), []).append(i)
    best: tuple[tuple[str, ...], float] = ((), 0.0)
    for gram, positions in starts.items():
        if len(positions) < NGRAM_MIN_REPEATS:
            continue
        # Union of the occurrences' spans: overlapping matches ("a a a") must not count twice.
        covered = len({p for start in positions for p in range(start, start + n)})
        if covered / len(tokens) > best[1]:
            best = (gram, covered / len(tokens))
    return best


def _low_variety(text: str) -> str | None:
    tokens = _tokens(text)
    if len(tokens) < MIN_TOKENS_FOR_VARIETY:
        return None
    ratio = len(Counter(tokens)) / len(tokens)
    if ratio < MIN_DISTINCT_RATIO:
        return f"repetition: only {ratio:.0%} of the tokens are distinct"
    return None


def _mostly_non_words(text: str) -> str | None:
    chars = [c for c in text if not c.isspace() and c not in _MARKUP_CHARS]
    if len(chars) < MIN_CHARS_FOR_NONWORDS:
        return None
    garbage = sum(1 for c in chars if c == "\ufffd" or (ord(c) < 32 or 127 <= ord(c) < 160))
    if garbage / len(chars) > MAX_GARBAGE_CHAR_RATIO:
        return f"mostly non-words: {garbage / len(chars):.0%} replacement or control characters"
    wordlike = sum(1 for c in chars if c.isalnum())
    if wordlike / len(chars) < MIN_WORDLIKE_CHAR_RATIO:
        return f"mostly non-words: only {wordlike / len(chars):.0%} letters or digits"
    return None
