"""Is a completion incoherent? Lets the UI say "refusal gone, but the output is a loop / noise".

Truncated models often stop refusing only because they stop making sense. Seen on real truncated
models: runs of (non-breaking) spaces, symbol soup ("(, and,  .  ,   ."), letter runs
("S I A N B T N N N"), loops of a token or a whole sentence, counting loops where only a number
changes ("a 1st class of a 2nd class of a 3rd class", "2018 2019 2020 2021 …", "1. 2. 3. 4. 5. 6."),
and text with hardly a real word in it. Each check below catches one of these and says so. They stay
conservative where real answers look odd: a one-word answer, a numbered recipe, code, markdown
tables, JSON, a list of numbers, a poem's refrain or non-English prose must pass. Measured on the
labelled fixture tests/fixtures/coherence_labelled.jsonl (tests/test_degenerate.py), per depth band,
on a part the checks were written from and on a held-out part they were not.

A graded, model-based companion is ``engine.coherence.full_depth_nll`` (needs torch; this module not).
"""

from __future__ import annotations

import json
import operator
import re
from collections import Counter
from collections.abc import Callable
from itertools import groupby

# Bump when the checks change: a stored ``degenerate`` flag computed by an older version is stale.
DEGENERACY_VERSION = "4"

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
_DIGIT = re.compile(r"\d")
# Counted in words, a count too: "first- and second- and third- and fourth-".
_ORDINAL_WORDS = frozenset(
    ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
)
# A bare number ("2019", "1930s", "3rd", "1.", "100-") followed by whitespace: one step of a count.
# Commas ("2, 3, 5, 7") and joined forms ("2017-01-11", "11:31", "2014-2015") are data, not counting.
_BARE_NUMBER = r"(?<![\w,.:;/-])\d+(?:st|nd|rd|th|s)?[-.]?(?:\s+|$)"

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
COUNTING_RUN = 5  # bare numbers in a row, with nothing but whitespace (or "-", ".") between them
_COUNTING_RUN = re.compile(f"(?:{_BARE_NUMBER}){{{COUNTING_RUN},}}")
COUNTING_LOOP_COPIES = 4  # "a 2001, a 2002, a 2003, a 2004": a count this long is a loop wherever it sits
DIGIT_RUN = 20  # one digit written this many times in a row: "500000000000000000000000000"
_DIGIT_RUN = re.compile(rf"(\d)\1{{{DIGIT_RUN - 1},}}")
NUMBER_REPEATS = 3  # a number written this often ...
MAX_REPEATED_NUMBER_SHARE = 0.3  # ... taking up this share of the pieces (12 or more): "1. 2. 3: … 1. 2. 3:"
# A number as written between spaces: "19th", "2014-2015", "3.10", "99%", "1930s".
_NUMBER_PIECE = re.compile(r"\d[\d.,:/%-]*(?:st|nd|rd|th|s)?")
EMPTY_LIST_ITEMS = 4  # list markers in a row with nothing after them: "-\n-\n-\n-" or "1.\n2.\n3.\n4."
_EMPTY_LIST_ITEM = re.compile(r"[ \t\u00a0]*(?:[-*•+]|\d+[.)])[ \t\u00a0]*")
# Word salad: fluent-looking fragments of real words. No one sign is enough (real answers have a "vitamin
# C", a "more and more", a "100%" or two); SALAD_SIGNS points from several kinds of sign are.
SALAD_SIGNS = 3
SALAD_POINTS_PER_SIGN = 2  # one kind of sign, however often it occurs, is never enough alone
# A capital letter standing alone as a word mid-sentence ("the N possible", "S su is", "D cod"): not "I",
# an initial ("J. Smith"), a letter joined by a hyphen ("3- D", "C-section") or a sentence's "A".
_STRAY_CAPITAL = re.compile(r"(?<![\w.'’&/-])(?<!- )[B-HJ-Z](?![\w.'’&/-])|(?<=[a-z,] )A(?= [a-z])")
# A lower-case letter standing alone as a word ("so m sure", "free- d un", "b h m"): English has only "a"
# (x, y and z are maths); after a number it is a unit or a sign ("200 g", "2 x 3"); in brackets or
# before "=" or "[" it is code.
_STRAY_LOWER = re.compile(r"(?<!\d )(?<![\w.'’&/(-])[b-w](?![\w.'’&/(=\[-])")
# Words that name a letter on purpose: "vitamin C", "Plan B", "type A", "let n", "the vector v".
_NAMES_A_LETTER = frozenset(
    (
        "vitamin", "plan", "type", "grade", "class", "group", "hepatitis", "section", "part", "option",
        "model", "row", "column", "point", "step", "phase", "level", "letter", "team", "appendix",
        "category", "tier", "size", "blood", "let", "where", "variable", "vector", "constant", "scalar",
        "matrix", "function", "angle", "side", "by",
    )
)  # fmt: skip
_SELF_COORDINATION = re.compile(r"\b(\w+(?: \w+)?) (?:and|or) \1\b", re.IGNORECASE)
_DOUBLED_WORD = re.compile(r"\b([^\W\d_]{2,}) \1\b", re.IGNORECASE)
_MEANT_REPEATS = frozenset(("more", "less", "again", "over", "on", "through", "round", "by", "after", "and"))
_MEANT_DOUBLES = frozenset(("that", "had", "very", "is", "so", "really", "no", "bye", "ha", "knock"))
# A number written out (any form: "100%", "2022-2023", "12.5"), counted to find ones said 3+ times.
_ANY_NUMBER = re.compile(r"\d[\d.,%-]*\d%?|\d%?")
# A word broken by a hyphen before something other than a lower-case word ("free- d un", "12.5% flat-
# 12.5%"), and quotes with nothing in them ('the process of " "').
_BROKEN_PIECE = re.compile(r"\w- (?![a-z]|[A-Z]\b)|\" \"")
_INNER_SPACES = re.compile(r"(?<=\S)[ \u00a0]{2,}(?=\S)")  # "name is a  name change,  and  it"
# Numbers in a comma-separated run that count by one or repeat: "101, 102, 103, 104", "1000, 1000".
_COMMA_NUMBERS = re.compile(r"\d+(?:, \d+)+")
COMMA_COUNT_RUN = 5  # this many such numbers in a row is a count standing in for an answer
COMMA_COUNT_SIGN = 3  # this many is one sign of salad

REFRAIN_COPIES = 3  # a whole line repeated at most this often is a refrain, not a loop
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
        _counting_loop,
        _counting_run,
        _digit_run,
        _empty_list_items,
        _repeated_numbers,
        _low_variety,
        _mostly_non_words,
        _loose_punctuation,
        _little_content,
        _comma_count,
        _word_salad,
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


def _words_and_lines(text: str, counters: bool = False) -> tuple[list[str], list[int], list[str]]:
    """The lower-cased words (the first 600: a loop shows within them; bounds the O(n²) scans), the line
    each stands on, and the numbers each stands for. With ``counters``, a number or a run of numbers
    becomes one "#" (an ordinal word too), so a unit that only counts ("step 1", "step 2", "2nd and",
    "third and") repeats like any other loop."""
    words: list[str] = []
    lines: list[int] = []
    numbers: list[str] = []
    line, seen = 0, 0
    for match in _WORD.finditer(text):
        line, seen = line + text.count("\n", seen, match.start()), match.start()
        word = match.group(0).lower()
        if counters and (_DIGIT.search(word) or word in _ORDINAL_WORDS):
            if words and words[-1] == "#" and lines[-1] == line:
                if word not in numbers[-1].split():  # "2 ( 2)" counts 2 once
                    numbers[-1] += " " + word
                continue
            word = "#"
        words.append(word)
        lines.append(line)
        numbers.append(word if word != "#" else match.group(0))
        if len(words) == 600:
            break
    return words, lines, numbers


def _periodic_loop(text: str) -> str | None:
    """A unit of any length repeated in a row: for each period p, positions where word i equals word
    i + p form runs; a run of 2p or more is a unit looped 3+ times (p or more for a unit of 8+ words).
    Punctuation is ignored so "heart," and "heart." still match."""
    words, lines, _ = _words_and_lines(text)
    if (loop := _longest_loop(words, lines)) is None:
        return None
    share, unit, copies = loop
    if share >= PERIODIC_COVERAGE:
        return f"repetition: {unit!r} looped over {share:.0%} of the words"
    return f"repetition: {unit!r} repeated {copies} times in a row"


def _counting_loop(text: str) -> str | None:
    """A loop whose copies differ only in their numbers: "a 1st class of a 2nd class of a 3rd class",
    "Step 1: Step 2: Step 3:", a list whose items repeat with a new number each. Units without a real
    word ("2 x 3 = 6") are left alone: a table of numbers counts on purpose."""
    words, lines, numbers = _words_and_lines(text, counters=True)

    def counting(start: int, period: int, run: int) -> bool:
        unit = words[start : start + period]
        return "#" in unit and _has_real_word(unit) and _counts(numbers, start, period, run)

    loop = _longest_loop(
        words,
        lines,
        keep=counting,
        min_run=_counting_min_run,
        long_copies=COUNTING_LOOP_COPIES,
    )
    if loop is None:
        return None
    share, unit, copies = loop
    how = f"over {share:.0%} of the words" if share >= PERIODIC_COVERAGE else f"{copies} times in a row"
    return f"counting loop: {unit!r} repeated {how}, only the numbers change"


def _counts(numbers: list[str], start: int, period: int, run: int) -> bool:
    """The loop really counts: one number steps on from most copies to the next ("Step 1: Step 2:
    Step 3:"), or several step together as one count ("2. Dem 2 ( 2) 3. Dem 3 ( 3)"). Two numbers
    stepping apart ("Week 1: run 2 km. Week 2: run 3 km.") make a plan or a table; none stepping
    ("* 100mm pipe * 10mm pipe * 10mm pipe") is a list, not a count."""
    end = start + run + period  # one past the loop's last word
    stepping = []
    for offset in range(period):
        later = range(start + period + offset, end, period)  # this slot in every later copy
        if _mostly(numbers[i] != numbers[i - period] for i in later):
            stepping.append(later)
    if not stepping:
        return False
    first = stepping[0]
    # A later slot may lack the last, cut-off copy: compare the copies both have.
    return not any(
        _mostly(numbers[i] != numbers[j] for i, j in zip(first, other, strict=False))
        for other in stepping[1:]
    )


def _mostly(flags) -> bool:
    flags = list(flags)
    return bool(flags) and sum(flags) > len(flags) / 2


def _has_real_word(unit: list[str]) -> bool:
    return any(_REAL_WORD.fullmatch(word) for word in unit)


def _longest_loop(
    words: list[str],
    lines: list[int],
    keep: Callable[[int, int, int], bool] = lambda start, period, run: True,
    min_run: Callable[[int], int] = lambda period: _min_run(period),
    long_copies: int = LONG_LOOP_COPIES,
) -> tuple[float, str, int] | None:
    """(share of the words looped, the unit, its copies) for the loop that covers most words (a unit
    accepted by ``keep(start, period, run)``, in a run of ``min_run(period)`` matches or more), when it covers
    PERIODIC_COVERAGE of them or runs ``long_copies`` times."""
    if len(words) < MIN_WORDS_FOR_REPETITION:
        return None
    best_share, best_unit, most_copies, most_unit = 0.0, "", 0, ""
    for period in range(1, len(words) // 2 + 1):  # a long unit needs only two copies
        needed = min_run(period)
        if sum(map(operator.eq, words, words[period:])) < needed:
            continue  # cheap rejection: not enough matches at this period for any loop
        covered, first_unit = 0, ""
        for start, run in _match_runs(words, period):
            unit = words[start : start + period]
            if run < needed or not keep(start, period, run) or _is_refrain(lines, start, period, run):
                continue
            covered += run + period
            first_unit = first_unit or " ".join(unit)
            if (copies := (run + period) // period) > most_copies:
                most_copies, most_unit = copies, " ".join(unit)
        if covered / len(words) > best_share:
            best_share, best_unit = covered / len(words), first_unit
    if best_share >= PERIODIC_COVERAGE:
        return best_share, best_unit, most_copies
    if most_copies >= long_copies:
        return best_share, most_unit, most_copies
    return None


def _is_refrain(lines: list[int], start: int, period: int, run: int) -> bool:
    """A whole line sung up to REFRAIN_COPIES times ("A far-off land of leaves," three times over), with
    more text after it, is a poem's refrain; a loop that goes on longer, runs to the end of the text or
    does not keep to lines is not."""
    copies = (run + period) // period
    if copies > REFRAIN_COPIES or start + run + period >= len(lines):
        return False  # sung too often, or still going when the text stops
    for copy in range(copies):
        first, last = start + copy * period, start + (copy + 1) * period - 1
        starts_line = first == 0 or lines[first - 1] != lines[first]
        ends_line = last + 1 == len(lines) or lines[last + 1] != lines[last]
        if not (starts_line and ends_line and lines[first] == lines[last]):
            return False
    return True


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


def _counting_min_run(period: int) -> int:
    """As ``_min_run``, but a short unit that counts needs a fourth copy begun: a template list of three
    ("Step 1: [..]. Step 2: [..]. Step 3: [..].") is a real answer, a count that goes on is a loop."""
    return period if period >= LONG_UNIT_WORDS else 2 * period + 1


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


def _counting_run(text: str) -> str | None:
    """Bare numbers one after another with nothing but a space or a dangling "-" or "." between them:
    "2018 2019 2020 2021 2022 2023", "100- 150- 160- 170- 180- 190-", "1. 2. 3. 4. 5. 6.". Text without
    a letter (an answer that is a list of numbers) is left alone."""
    if not any(c.isalpha() for c in text):
        return None
    if (run := _COUNTING_RUN.search(text)) is None:
        return None
    numbers = len(_WORD.findall(run.group(0)))
    return f"counting: {numbers} bare numbers in a row ({run.group(0).strip()[:40]!r})"


def _repeated_numbers(text: str) -> str | None:
    """The same few numbers over and over: "first, 1. 2. 3: second, 1. 2. 3: third, 1. 2. 3:", "the 19th
    century, the 19th century, the 19th 200". A list of distinct numbers (versions, scores, dates)
    passes; so does arithmetic ("2 x 3 = 6"), which repeats its operands on purpose."""
    if "=" in text:
        return None
    pieces = [piece for chunk in text.split() if (piece := chunk.strip(".,:;!?()[]{}\"'-"))]
    if len(pieces) < MIN_WORDS_FOR_SHARES:
        return None
    counts = Counter(piece for piece in pieces if _NUMBER_PIECE.fullmatch(piece))
    repeated = {number: n for number, n in counts.items() if n >= NUMBER_REPEATS}
    share = sum(repeated.values()) / len(pieces)
    if share >= MAX_REPEATED_NUMBER_SHARE:
        numbers = ", ".join(sorted(repeated, key=repeated.__getitem__, reverse=True)[:3])
        return f"counting: the same numbers ({numbers}) make up {share:.0%} of the text"
    return None


def _empty_list_items(text: str) -> str | None:
    """Bullets or numbers on lines of their own, with nothing in them: a list that never got written."""
    run = longest = 0
    for line in text.splitlines():
        if not line.strip():
            continue  # blank lines between items are layout
        run = run + 1 if _EMPTY_LIST_ITEM.fullmatch(line) else 0
        longest = max(longest, run)
    if longest >= EMPTY_LIST_ITEMS:
        return f"empty list: {longest} list items in a row with nothing in them"
    return None


def _digit_run(text: str) -> str | None:
    """One digit over and over: a number nobody writes out ("5000000000000000000000000000000")."""
    if (run := _DIGIT_RUN.search(text)) is None:
        return None
    return f"repetition: the digit {run.group(1)!r} written {len(run.group(0))} times in a row"


def _dangling_hyphens(text: str) -> str | None:
    """Word fragments cut by a hyphen and a space: "a 100- year- old- 100- year-". A piece followed by a
    lower-case word ("two- factor", "pre- and post-war") is a compound spelt with a space; a number's,
    or one beside another fragment, before a capital or at the end of the text is broken."""
    chunks = text.split()
    pieces = [_dangles(chunk) for chunk in chunks]
    dangling = sum(
        1
        for i, chunk in enumerate(chunks)
        if pieces[i] and (i > 0 and pieces[i - 1] or _is_broken_piece(chunk, chunks[i + 1 : i + 2]))
    )
    if dangling >= MIN_DANGLING_HYPHENS and dangling / len(chunks) >= MAX_DANGLING_HYPHEN_SHARE:
        return f"broken words: {dangling} of {len(chunks)} pieces end in a dangling hyphen"
    return None


def _dangles(chunk: str) -> bool:
    return len(chunk) > 1 and chunk.endswith("-") and chunk[-2].isalnum()


def _is_broken_piece(chunk: str, following: list[str]) -> bool:
    if chunk[0].isdigit() or not following:
        return True
    after = following[0]
    return after.endswith("-") or not after[0].islower()


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


def _comma_count(text: str) -> str | None:
    """Numbers separated by commas that count by one or repeat ("101, 102, 103, 104, 105", "1, 2, 3, 4,
    5, 6, 8, 9, 10,") and are still counting when the text stops, in text with words. A count that ends
    ("Counting to ten: 1, 2, …, 10.") and lists that do not count (primes, dates, versions) pass."""
    if not any(c.isalpha() for c in text):
        return None
    if (longest := _longest_comma_count(text, to_the_end=True)) >= COMMA_COUNT_RUN:
        return f"counting: {longest} numbers separated by commas count by one to the end of the text"
    return None


def _longest_comma_count(text: str, to_the_end: bool = False) -> int:
    """The most numbers in one comma-separated run whose steps are mostly +1 or 0 (the last number may
    be cut off at the token limit: a prefix of the next in the count, counted with it). With
    ``to_the_end``, only a run with nothing but commas after it counts."""
    longest = 0
    for run in _COMMA_NUMBERS.finditer(text):
        if to_the_end and text[run.end() :].strip(", \n"):
            continue
        numbers = run.group(0).split(", ")
        cut = len(numbers) > 2 and _cut_short(numbers[-2], numbers[-1])
        steps = [int(b) - int(a) for a, b in zip(numbers, numbers[1 : len(numbers) - cut], strict=False)]
        if _mostly(step in (0, 1) for step in steps):
            longest = max(longest, len(numbers))
    return longest


def _cut_short(previous: str, last: str) -> bool:
    return len(last) < len(previous) and (
        previous.startswith(last) or str(int(previous) + 1).startswith(last)
    )


def _word_salad(text: str) -> str | None:
    """Real words that do not form sentences: "the D cod, is a complex and complex issue", "S su is a
    highly complex and complex process", "the most common and most common- S right of the  name". Signs,
    each common enough alone in real answers, counted together: stray capital letters, a word coordinated
    with itself, the same number said 3+ times, broken pieces, spaces inside a line, a short count."""
    signs = _salad_signs(text)
    points = sum(min(SALAD_POINTS_PER_SIGN, n) for n in signs.values())
    if points >= SALAD_SIGNS:
        named = ", ".join(f"{n} {sign}" for sign, n in signs.items() if n)
        return f"word salad: {named}"
    return None


def _salad_signs(text: str) -> dict[str, int]:
    numbers = Counter(_ANY_NUMBER.findall(text))
    coordinated = [
        m
        for m in _SELF_COORDINATION.finditer(text)
        if not (m.group(1).lower() in _MEANT_REPEATS or m.group(1).lower().endswith("er"))
    ]
    doubled = [m for m in _DOUBLED_WORD.finditer(text) if m.group(1).lower() not in _MEANT_DOUBLES]
    return {
        "stray capitals": _stray_letters(_STRAY_CAPITAL, text),
        "stray letters": _stray_letters(_STRAY_LOWER, text),
        "self-repeats": len(coordinated) + len(doubled),
        "numbers said 3+ times": sum(1 for n in numbers.values() if n >= 3),
        "broken pieces": len(_BROKEN_PIECE.findall(text)),
        "inner space runs": len(_INNER_SPACES.findall(text)),
        "short counts": int(_longest_comma_count(text) >= COMMA_COUNT_SIGN),
    }


def _stray_letters(pattern: re.Pattern[str], text: str) -> int:
    """Letters standing alone as words, but not where the word before names one ("vitamin C")."""
    return sum(1 for m in pattern.finditer(text) if _word_before(text, m.start()) not in _NAMES_A_LETTER)


def _word_before(text: str, at: int) -> str:
    words = _WORD.findall(text[max(0, at - 24) : at])
    return words[-1].lower() if words else ""
