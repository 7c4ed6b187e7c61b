"""Property tests: whatever a user uploads, engine.datasets returns prompts or raises DatasetError."""

from __future__ import annotations

import csv
import io
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.datasets import LABELS, MAX_PROMPT_CHARS, DatasetError, parse_csv, to_csv
from engine.types import Prompt, stable_hash

FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the shared checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

STRIPPED_CONTROLS = "".join(chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)])
STRIPPED_CONTROLS_WITHOUT_CR = STRIPPED_CONTROLS.replace("\r", "")
KNOWN_COLUMNS = [
    "prompt", "label", "id", "category", "context", "tags", "Behavior", "BehaviorID", "ContextString",
    "Tags", "SemanticCategory", "forbidden_prompt", "source", "goal", "target",
]  # fmt: skip

# Text a user may legitimately put in a cell: anything but the controls we strip and CR (becomes LF).
clean_char = st.characters(exclude_categories=("Cs",), exclude_characters=STRIPPED_CONTROLS)
clean_text = st.text(clean_char, max_size=120)
prompt_text = st.text(clean_char, min_size=1, max_size=300).filter(lambda s: s.strip())
trimmed_text = clean_text.map(str.strip)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=400)


def parse_or_dataset_error(data: bytes | str) -> list[Prompt] | None:
    """Parse, accepting only DatasetError; check the invariants every returned set must hold."""
    try:
        prompts = parse_csv(data, filename="fuzz.csv")
    except DatasetError as error:
        assert str(error).strip()
        return None
    assert prompts, "a successful parse never returns an empty set"
    assert len({p.prompt_id for p in prompts}) == len(prompts)
    for prompt in prompts:
        assert prompt.text.strip() and len(prompt.text) <= MAX_PROMPT_CHARS
        assert prompt.label in LABELS and prompt.source == "fuzz"
        assert not set(prompt.text + prompt.context) & set(STRIPPED_CONTROLS)  # CR becomes LF
    return prompts


def write_csv(
    rows: list[list[str]], delimiter: str = ",", terminator: str = "\n", quoting: int = csv.QUOTE_MINIMAL
) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter, lineterminator=terminator, quoting=quoting).writerows(rows)
    return buffer.getvalue()


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise_anything_but_dataset_error(data):
    parse_or_dataset_error(data)


@FUZZ
@given(st.sampled_from([b"prompt,label\n", b"Behavior,BehaviorID\n", b"goal,target\n", b""]), st.binary())
def test_known_header_with_random_bytes_below(header, body):
    parse_or_dataset_error(header + body)


@FUZZ
@given(any_text)
def test_random_text_never_raises_anything_but_dataset_error(text):
    parse_or_dataset_error(text)


@FUZZ
@given(
    header=st.lists(st.one_of(st.sampled_from(KNOWN_COLUMNS), any_text), min_size=1, max_size=7),
    rows=st.lists(st.lists(st.one_of(any_text, st.sampled_from([*LABELS, "", " "])), max_size=8), max_size=6),
    delimiter=st.sampled_from([",", "\t", ";"]),
)
def test_random_headers_and_cells_never_raise_anything_but_dataset_error(header, rows, delimiter):
    parse_or_dataset_error(write_csv([header, *rows], delimiter))


LAYOUTS = [
    ["prompt", "label", "id", "category", "context", "tags"],
    ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"],
    ["category", "source", "forbidden_prompt"],
    ["goal", "target"],
]


@st.composite
def known_layout_csv(draw) -> tuple[list[str], list[list[str]]]:
    """A real format's header (shuffled, maybe an extra column) over rows of plausible or random cells."""
    header = draw(st.permutations(draw(st.sampled_from(LAYOUTS))))
    header = header + draw(st.lists(st.sampled_from(["notes", ""]), max_size=1))
    cell = st.one_of(
        st.sampled_from(["harmful", "benign", " Benign", "", "x", "same-id"]), prompt_text, any_text
    )
    width = len(header)
    rows = draw(st.lists(st.lists(cell, min_size=width - 1, max_size=width + 1), min_size=1, max_size=6))
    return header, rows


@FUZZ
@given(
    known_layout_csv(), st.sampled_from([",", "\t", ";"]), st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
)
def test_known_layouts_with_random_cells_parse_or_raise_dataset_error(layout, delimiter, quoting):
    header, rows = layout
    prompts = parse_or_dataset_error(write_csv([header, *rows], delimiter, quoting=quoting))
    if prompts is not None and quoting == csv.QUOTE_ALL:
        # fully quoted, no cell can split into two rows (csv.writer leaves a bare CR unquoted otherwise)
        assert len(prompts) <= len(rows)


@settings(FUZZ, max_examples=30)  # each example builds a megabyte of text
@given(
    size=st.integers(MAX_PROMPT_CHARS + 1, 1_000_000),
    char=st.sampled_from(["x", "é", "\n", ",", '"', "\x00"]),
    quoted=st.booleans(),
)
def test_megabyte_prompts_are_refused_on_their_row(size, char, quoted):
    body = char * size
    quoted = quoted or char == '"'  # an even run of bare quotes is valid CSV for half as many quotes
    cell = '"' + body.replace('"', '""') + '"' if quoted else body
    try:
        parse_csv(f"prompt,label\nshort,benign\n{cell},harmful\n", filename="big.csv")
    except DatasetError as error:
        # unquoted line breaks push the row down, so "row 3 or later"; never the valid row 2
        assert error.row is not None and error.row >= 3
        if char in "xé":
            assert f"{MAX_PROMPT_CHARS:,}" in str(error)
    else:
        raise AssertionError("a megabyte cell must be refused (too long, empty once cleaned, or malformed)")


@FUZZ
@given(
    pieces=st.lists(
        st.one_of(st.text(clean_char, max_size=20), st.sampled_from(STRIPPED_CONTROLS)), max_size=30
    ),
    control=st.sampled_from(STRIPPED_CONTROLS_WITHOUT_CR),
)
def test_control_characters_are_removed_and_nothing_else(pieces, control):
    text = control + "".join(pieces)
    expected = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text.replace("\r\n", "\n").replace("\r", "\n"))
    # QUOTE_ALL: csv.writer leaves a bare CR unquoted, and a bare CR is a line break in CSV
    data = write_csv([["prompt", "label"], [text, "benign"]], quoting=csv.QUOTE_ALL)
    if not expected.strip():
        try:
            parse_csv(data)
        except DatasetError as error:
            assert error.row == 2 and "the prompt is empty" in str(error)
        else:
            raise AssertionError("a prompt of only control characters must be refused")
        return
    assert [p.text for p in parse_csv(data)] == [expected]


@FUZZ
@given(
    ids=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=2, max_size=8).filter(
        lambda ids: len(set(ids)) < len(ids)
    )
)
def test_duplicate_ids_name_both_rows(ids):
    rows = [["id", "prompt"], *([prompt_id, f"prompt {n}"] for n, prompt_id in enumerate(ids))]
    repeat = next(n for n, prompt_id in enumerate(ids) if prompt_id in ids[:n])
    first = ids.index(ids[repeat])
    try:
        parse_csv(write_csv(rows))
    except DatasetError as error:
        assert error.row == repeat + 2
        assert f"the id '{ids[repeat]}' was already used on row {first + 2}" in str(error)
    else:
        raise AssertionError("duplicate ids must be refused")


valid_row = st.tuples(
    trimmed_text.filter(lambda s: 0 < len(s) <= 200),  # id
    prompt_text,
    st.sampled_from(["harmful", "benign", "Harmful", " BENIGN "]),
    trimmed_text,  # category
)


@FUZZ
@given(
    rows=st.lists(valid_row, min_size=1, max_size=8, unique_by=lambda row: row[0]),
    delimiter=st.sampled_from([",", "\t", ";"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_valid_generated_csvs_round_trip_exactly(rows, delimiter, terminator, bom):
    text = write_csv([["id", "prompt", "label", "category"], *map(list, rows)], delimiter, terminator)
    data = ("\ufeff" if bom else "") + text
    expected = [Prompt(i, p, label.strip().lower(), c, source="mine") for i, p, label, c in rows]
    assert parse_csv(data.encode("utf-8"), filename="mine.csv") == expected


@FUZZ
@given(
    st.lists(
        st.builds(
            Prompt,
            prompt_id=st.just(""),
            text=prompt_text,
            label=st.sampled_from(LABELS),
            category=trimmed_text,
            context=clean_text,
            source=st.just("set"),
            tags=trimmed_text,
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda p: (p.text, p.context),
    )
)
def test_to_csv_round_trips_prompts_exactly(prompts):
    prompts = [
        Prompt(stable_hash([p.text, p.context]), p.text, p.label, p.category, p.context, p.source, p.tags)
        for p in prompts
    ]
    assert parse_csv(to_csv(prompts), source="set") == prompts
