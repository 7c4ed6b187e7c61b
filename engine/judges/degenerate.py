"""Is a completion incoherent? Lets the UI say "refusal gone, but the output is a loop / noise".

Truncated models often stop refusing only because they stop making sense. Seen on real truncated
models: runs of (non-breaking) spaces, symbol soup ("(, and,  .  ,   ."), letter runs
("S I A N B T N N N"), loops of a token or a whole sentence, and text with hardly a real word in it.
Each check below catches one of these and says so. They stay conservative where real answers look
odd: a one-word answer, a numbered recipe, code, markdown tables, JSON or non-English prose must
pass. Measured on the labelled fixture tests/fixtures/coherence_labelled.jsonl (tests/test_degenerate.py).

A graded, model-based companion is ``engine.coherence.full_depth_nll`` (needs torch; this module not).
"""

from __future__ import annotations

import json
import operator
import re
from collections import Counter
from itertools import groupby

# Bump when the checks change: a stored ``degenerate`` flag computed by an older version is stale.
DEGENERACY_VERSION = "2"

# A unit of 1-12 characters repeated at least 4 times in a row: "!!!!", "hahaha", ":\n\n:\n\n:\n\n".
_CHAR_LOOP = re.compile(r"(.{1,12}?)\1{3,}", re.DOTALL)
# Words (any script, digits included) and runs of punctuation are tokens; whitespace is not.
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_WORD = re.compile(r"\w+")
# A real word: two or more letters (any script), contractions kept whole ("I'm", "don’t").
_REAL_WORD = re.compile(r"[^\W\d_]{2,}(?:['’][^\W\d_]+)?|[^\W\d_](?:['’][^\W\d_]+)")
_SPACELESS_SCRIPTS = "\u2e80"  # CJK and later blocks: no spaces between words
_SINGLE_LETTER = re.compile(r"[^\W\d_]")
_WHITESPACE_RUN = re.compile(r"\s+")  # \s is Unicode-aware: NBSP, thin and ideographic spaces count

# Thresholds. Set by reasoning about real text first, then checked on the labelled fixture.
CHAR_LOOP_COVERAGE = 0.6  # share of the text inside character-level loops
PERIODIC_COVERAGE = 0.5  # share of words inside a looped unit (any period) repeated 3+ times
LONG_UNIT_WORDS = 8  # a unit this long is a loop once it is repeated back to back
LONG_LOOP_COPIES = 6  # a unit repeated this many times in a row is a loop wherever it sits
MIN_WORDS_FOR_REPETITION = 6
MIN_TOKENS_FOR_VARIETY = 20
MIN_DISTINCT_RATIO = 0.2
MIN_CHARS_FOR_NONWORDS = 8
MIN_WORDLIKE_CHAR_RATIO = 0.25  # letters/digits among the characters checked
MAX_GARBAGE_CHAR_RATIO = 0.2  # U+FFFD and control characters among the characters checked
MAX_EXCESS_WHITESPACE = 0.2  # whitespace beyond one space / one blank line, as a share of the text
MIN_CHARS_FOR_WHITESPACE = 12
NGRAM_LOOP_COVERAGE = 0.6  # share of words covered by the most repeated n-gram (3+ times, anywhere)
NGRAM_MIN_REPEATS = 3
MAX_NGRAM = 8
MIN_DANGLING_HYPHENS = 3  # "pre- and post-war" has one; fragment soup has many
MAX_DANGLING_HYPHEN_SHARE = 0.1
LETTER_RUN = 5  # this many single-letter words in a row ("S I A N B")
MAX_SINGLE_LETTER_SHARE = 0.4  # of the words, when there are at least MIN_WORDS_FOR_SHARES
MIN_WORDS_FOR_SHARES = 12
MAX_LOOSE_PUNCTUATION_SHARE = 0.3  # of whitespace-separated chunks, when there are at least 6
MIN_CHUNKS_FOR_PUNCTUATION = 6
MIN_CONTENT_WORDS = 3  # real words, when the text has letters and at least MIN_CHARS_FOR_CONTENT
MIN_CHARS_FOR_CONTENT = 24
# Markdown structure (tables, rules, bullets, emphasis) is legitimate and nearly letter-free.
_MARKUP_CHARS = frozenset("|-=_*#>`~:+")
# Sentence punctuation that real prose attaches to a word; standing alone between spaces it is soup.
_ATTACHED_PUNCTUATION = frozenset(".,:;!?\"'()[]{}“”‘’")


def is_degenerate(text: str) -> bool:
    return degeneracy_reason(text) is not None


def degeneracy_reason(text: str) -> str | None:
    """A short human-readable reason why ``text`` is degenerate, or None when it looks coherent."""
    if not text:
        return "empty"
    if not text.strip():
        return "whitespace only"
    if (reason := _whitespace_runs(text)) is not None:
        return reason
    stripped = text.strip()
    if _is_structured_data(stripped):
        return None
    checks = (
        _character_loop,
        _letter_runs,
        _periodic_loop,
        _ngram_loop,
        _dangling_hyphens,
        _low_variety,
        _mostly_non_words,
        _loose_punctuation,
        _little_content,
    )
    for check in checks:
        if (reason := check(stripped)) is not None:
            return reason
    return None


def _is_structured_data(text: str) -> bool:
    """Valid JSON (an object or array) is data, not symbol soup, however few words it has."""
    if not text.startswith(("{", "[")):
        return False
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def _whitespace_runs(text: str) -> str | None:
    """Whitespace beyond what layout needs: one space between words, one blank line between paragraphs,
    indentation after a newline, padding inside a markdown table."""
    if len(text) < MIN_CHARS_FOR_WHITESPACE:
        return None
    excess = 0
    for run in _WHITESPACE_RUN.finditer(text):
        chunk = run.group(0)
        newlines = chunk.count("\n")
        if newlines:
            excess += max(0, newlines - 2)  # a blank line is layout; indentation after it too
            continue
        beside = text[run.start() - 1 : run.start()] + text[run.end() : run.end() + 1]
        if "|" not in beside:  # table padding is layout
            excess += len(chunk) - 1
    if excess / len(text) > MAX_EXCESS_WHITESPACE:
        return f"whitespace runs: {excess / len(text):.0%} of the text is extra whitespace"
    return None


def _character_loop(text: str) -> str | None:
    looped = sum(len(m.group(0)) for m in _CHAR_LOOP.finditer(text))
    if len(text) >= 4 and looped / len(text) >= CHAR_LOOP_COVERAGE:
        return f"repetition: {looped / len(text):.0%} of the characters are a short repeated unit"
    return None


def _words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def _periodic_loop(text: str) -> str | None:
    """A unit of any length repeated in a row: for each period p, positions where word i equals word
    i + p form runs; a run of 2p or more is a unit looped 3+ times (p or more for a unit of 8+ words).
    Punctuation is ignored so "heart," and "heart." still match."""
    words = _words(text)[:600]  # a loop shows within the first 600 words; bounds the O(n²) scan
    if len(words) < MIN_WORDS_FOR_REPETITION:
        return None
    best_share, best_unit, most_copies, most_unit = 0.0, "", 0, ""
    for period in range(1, len(words) // 2 + 1):  # a long unit needs only two copies
        if sum(map(operator.eq, words, words[period:])) < _min_run(period):
            continue  # cheap rejection: not enough matches at this period for any loop
        covered = 0
        for start, run in _match_runs(words, period):
            if run < _min_run(period):
                continue
            covered += run + period
            if (copies := (run + period) // period) > most_copies:
                most_copies, most_unit = copies, " ".join(words[start : start + period])
        if covered / len(words) > best_share:
            best_share, best_unit = covered / len(words), _unit_at(words, period)
    if best_share >= PERIODIC_COVERAGE:
        return f"repetition: {best_unit!r} looped over {best_share:.0%} of the words"
    if most_copies >= LONG_LOOP_COPIES:
        return f"repetition: {most_unit!r} repeated {most_copies} times in a row"
    return None


def _match_runs(words: list[str], period: int) -> list[tuple[int, int]]:
    """(start, length) of each run of positions i where words[i] == words[i + period]."""
    runs, start = [], 0
    for same, group in groupby(map(operator.eq, words, words[period:])):  # map stops at the shorter
        length = sum(1 for _ in group)
        if same:
            runs.append((start, length))
        start += length
    return runs


def _min_run(period: int) -> int:
    """Matches needed in a row: a short unit must occur 3 times; a sentence-long one twice is a loop
    already (prose does not repeat eight words back to back)."""
    return period if period >= LONG_UNIT_WORDS else 2 * period


def _unit_at(words: list[str], period: int) -> str:
    """The first unit of this period that repeats (for the message only)."""
    for i in range(len(words) - 2 * period + 1):
        if words[i : i + period] == words[i + period : i + 2 * period]:
            return " ".join(words[i : i + period])
    return " ".join(words[:period])


def _ngram_loop(text: str) -> str | None:
    """The same n-gram over and over, not necessarily back to back: "the 19th century, the 19th …"."""
    words = _words(text)[:600]
    if len(words) < MIN_WORDS_FOR_REPETITION:
        return None
    best_gram, best_coverage = (), 0.0
    for n in range(1, min(MAX_NGRAM, len(words) // NGRAM_MIN_REPEATS) + 1):
        gram, coverage = _most_covering_ngram(words, n)
        if coverage > best_coverage:
            best_gram, best_coverage = gram, coverage
    if best_coverage >= NGRAM_LOOP_COVERAGE:
        return f"repetition: {' '.join(best_gram)!r} repeated over {best_coverage:.0%} of the text"
    return None


def _most_covering_ngram(words: list[str], n: int) -> tuple[tuple[str, ...], float]:
    """The n-gram occurring at least NGRAM_MIN_REPEATS times that covers most word positions."""
    starts: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(words) - n + 1):
        starts.setdefault(tuple(words[i : i + n]), []).append(i)
    best: tuple[tuple[str, ...], float] = ((), 0.0)
    for gram, positions in starts.items():
        if len(positions) < NGRAM_MIN_REPEATS:
            continue
        # Union of the occurrences' spans: overlapping matches ("a a a") must not count twice.
        covered = len({p for start in positions for p in range(start, start + n)})
        if covered / len(words) > best[1]:
            best = (gram, covered / len(words))
    return best


def _dangling_hyphens(text: str) -> str | None:
    """Word fragments cut by a hyphen and a space: "a 100- year- old- 100- year-"."""
    chunks = text.split()
    dangling = sum(1 for c in chunks if len(c) > 1 and c.endswith("-") and c[-2].isalnum())
    if dangling >= MIN_DANGLING_HYPHENS and dangling / len(chunks) >= MAX_DANGLING_HYPHEN_SHARE:
        return f"broken words: {dangling} of {len(chunks)} pieces end in a dangling hyphen"
    return None


def _letter_runs(text: str) -> str | None:
    words = _WORD.findall(text)
    run = longest = 0
    for word in words:
        run = run + 1 if _SINGLE_LETTER.fullmatch(word) else 0
        longest = max(longest, run)
    if longest >= LETTER_RUN:
        return f"letter run: {longest} single letters in a row"
    if len(words) >= MIN_WORDS_FOR_SHARES:
        share = sum(1 for w in words if _SINGLE_LETTER.fullmatch(w)) / len(words)
        if share >= MAX_SINGLE_LETTER_SHARE:
            return f"letter soup: {share:.0%} of the words are single letters"
    return None


def _low_variety(text: str) -> str | None:
    tokens = [token.lower() for token in _TOKEN.findall(text)]
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


def _loose_punctuation(text: str) -> str | None:
    """Commas, full stops and brackets standing alone between spaces: "(, and,  .  ,   ."."""
    chunks = text.split()
    if len(chunks) < MIN_CHUNKS_FOR_PUNCTUATION:
        return None
    loose = sum(
        1
        for c in chunks
        if not any(ch.isalnum() for ch in c) and any(ch in _ATTACHED_PUNCTUATION for ch in c)
    )
    if loose / len(chunks) >= MAX_LOOSE_PUNCTUATION_SHARE:
        return f"symbol soup: {loose / len(chunks):.0%} of the pieces are stray punctuation"
    return None


def _little_content(text: str) -> str | None:
    """Letters, but hardly a word: "S. H. A. 2017-03-01 2020-01-01". Text without any letter (a list of
    numbers) is left alone; scripts written without spaces count one word per character."""
    checked = sum(1 for c in text if not c.isspace() and c not in _MARKUP_CHARS)
    if checked < MIN_CHARS_FOR_CONTENT or not any(c.isalpha() for c in text):
        return None
    words = _REAL_WORD.findall(text)
    content = sum(max(1, sum(1 for c in word if c >= _SPACELESS_SCRIPTS)) for word in words)
    if content < MIN_CONTENT_WORDS:
        return f"little real content: {content} real words in {checked} characters"
    return None
