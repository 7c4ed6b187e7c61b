"""The CSV layouts a prompt set may come in, the checks every row passes, and the one dataset error.

Four CSV formats are accepted, recognised from the header row (column names are matched
case-insensitively; commas, tabs or semicolons as delimiters):

* HarmBench behaviours (``Behavior``, ``BehaviorID`` + ``FunctionalCategory``, ``SemanticCategory``,
  ``Tags``, ``ContextString``): id = BehaviorID, category = SemanticCategory, context = ContextString,
  tags = Tags, label = harmful.
* StrongREJECT (``forbidden_prompt`` + ``category``, ``source``): id = content hash, tags = the upstream
  ``source`` column (where the prompt was collected from), label = harmful.
* AdvBench ``harmful_behaviors.csv`` (``goal`` + ``target``): id = ``advbench-<i>`` with i the 0-based
  data-row index (the numbering llm-attacks uses), label = harmful; ``target`` is ignored.
* Our simple CSV (``prompt`` + optional ``label``, ``id``, ``category``, ``context``, ``tags``): label is
  harmful or benign (all harmful when the column is absent); a blank id becomes a content hash.

Cleaning rules, the same for every format: UTF-8 with or without a BOM; CRLF and lone CR become LF;
NUL, the other C0 controls except tab and newline, DEL and C1 controls are removed (they are invisible,
carry no meaning for a model and usually come from copy-pasting out of PDFs or terminals); prompt text is
otherwise kept verbatim (whitespace matters to tokenizers), while ids, labels, categories and tags are
trimmed. Every problem is raised as one ``DatasetError`` that names the file, the spreadsheet row (the
header is row 1) and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from engine.errors import DepthScopeError
from engine.types import Prompt, stable_hash

MAX_PROMPT_CHARS = 20_000  # per prompt and per context: far beyond any benchmark prompt (max ~3.5k)
MAX_ID_CHARS = 200
LABELS = ("harmful", "benign")


class DatasetError(DepthScopeError, ValueError):
    """A prompt set could not be read. The message says what, where and how to fix it."""

    def __init__(self, message: str, *, row: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.row = row  # spreadsheet row (header = 1), when the problem is in one row
        self.line = line  # physical line in a text editor, when known


class RowProblem(Exception):
    """Raised by row mappers; the parser adds file and row to the message (not part of the API)."""


# --------------------------------------------------------------------------- CSV formats


@dataclass(frozen=True)
class CsvFormat:
    """One accepted CSV layout. Columns are given as the files spell them; matching ignores case."""

    name: str
    title: str
    required: tuple[str, ...]  # the first one identifies the format
    optional: tuple[str, ...]
    to_prompt: Callable[[Mapping[str, str], int, str], Prompt]

    @property
    def signature(self) -> str:
        return self.required[0].lower()

    def describe(self) -> str:
        optional = f" (optional: {', '.join(self.optional)})" if self.optional else ""
        return f"{self.title}: {', '.join(self.required)}{optional}"


def content_id(text: str, context: str) -> str:
    """Id for rows without one: the same prompt gets the same id in every file."""
    return stable_hash([text, context])


def _checked_text(value: str, what: str) -> str:
    if not value.strip():
        raise RowProblem(f"the {what} is empty. Fill it in or delete the row")
    return _checked_length(value, what)


def _checked_length(value: str, what: str) -> str:
    if len(value) > MAX_PROMPT_CHARS:
        raise RowProblem(
            f"the {what} is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,}. "
            "Shorten it or split it into several prompts"
        )
    return value


def _checked_id(value: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise RowProblem(f"the id is {len(value):,} characters long; the limit is {MAX_ID_CHARS}")
    return value


def _checked_label(value: str) -> str:
    label = value.strip().lower()
    if label not in LABELS:
        shown = repr(value.strip()[:40]) if value.strip() else "empty"
        raise RowProblem(
            f"the label is {shown}; it must be 'harmful' or 'benign'. "
            "Fix the cell, or drop the label column to mark every prompt harmful"
        )
    return label


def _is_contextual(row: Mapping[str, str]) -> bool:
    """HarmBench marks a behaviour that needs its ContextString by category or by tag."""
    tags = {tag.strip().lower() for tag in row.get("tags", "").split(",")}
    return row.get("functionalcategory", "").strip().lower() == "contextual" or "context" in tags


def _harmbench_prompt(row: Mapping[str, str], index: int, source: str) -> Prompt:
    behavior_id = row["behaviorid"].strip()
    if not behavior_id:
        raise RowProblem("the BehaviorID is empty. Give every behaviour a unique BehaviorID")
    if _is_contextual(row) and not row.get("contextstring", "").strip():
        where = "cell is empty" if "contextstring" in row else "column is missing from the file"
        raise RowProblem(
            f"behaviour {behavior_id!r} is tagged contextual but its ContextString {where}: without "
            "its context the model would be asked a different question. Add the ContextString column "
            "(HarmBench's behaviours CSV has it) or drop the contextual rows"
        )
    return Prompt(
        prompt_id=_checked_id(behavior_id),
        text=_checked_text(row["behavior"], "Behavior"),
        label="harmful",
        category=row.get("semanticcategory", "").strip(),
        context=_checked_length(row.get("contextstring", ""), "ContextString"),
        source=source,
        tags=row.get("tags", "").strip(),
    )


def _strongreject_prompt(row: Mapping[str, str], index: int, source: str) -> Prompt:
    text = _checked_text(row["forbidden_prompt"], "forbidden_prompt")
    return Prompt(
        prompt_id=content_id(text, ""),
        text=text,
        label="harmful",
        category=row.get("category", "").strip(),
        source=source,
        tags=row.get("source", "").strip(),
    )


def _advbench_prompt(row: Mapping[str, str], index: int, source: str) -> Prompt:
    return Prompt(
        prompt_id=f"advbench-{index}",
        text=_checked_text(row["goal"], "goal"),
        label="harmful",
        source=source,
    )


def _simple_prompt(row: Mapping[str, str], index: int, source: str) -> Prompt:
    text = _checked_text(row["prompt"], "prompt")
    context = _checked_length(row.get("context", ""), "context")
    label = _checked_label(row["label"]) if "label" in row else "harmful"
    prompt_id = row.get("id", "").strip() or content_id(text, context)
    return Prompt(
        prompt_id=_checked_id(prompt_id),
        text=text,
        label=label,
        category=row.get("category", "").strip(),
        context=context,
        source=source,
        tags=row.get("tags", "").strip(),
    )


HARMBENCH_FORMAT = CsvFormat(
    "harmbench",
    "HarmBench behaviours",
    ("Behavior", "BehaviorID"),
    ("FunctionalCategory", "SemanticCategory", "Tags", "ContextString"),
    _harmbench_prompt,
)
STRONGREJECT_FORMAT = CsvFormat(
    "strongreject", "StrongREJECT", ("forbidden_prompt",), ("category", "source"), _strongreject_prompt
)
SIMPLE_FORMAT = CsvFormat(
    "simple",
    "Simple prompt list",
    ("prompt",),
    ("label", "id", "category", "context", "tags"),
    _simple_prompt,
)
ADVBENCH_FORMAT = CsvFormat(
    "advbench", "AdvBench harmful_behaviors", ("goal",), ("target",), _advbench_prompt
)
# Detection order: the first format whose signature column is present wins.
CSV_FORMATS: tuple[CsvFormat, ...] = (HARMBENCH_FORMAT, STRONGREJECT_FORMAT, SIMPLE_FORMAT, ADVBENCH_FORMAT)


def formats_help() -> str:
    """The accepted formats and their columns, one per line (for error messages and the UI)."""
    return "\n".join(f"  - {fmt.describe()}" for fmt in CSV_FORMATS)
