"""Reading prompt CSVs (files, uploads) into ``Prompt`` records, and writing them back.

Cleaning rules and the accepted layouts are described in ``formats.py``. Every problem is raised as one
``DatasetError`` naming the file, the spreadsheet row (the header is row 1) and the fix.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.types import Prompt, stable_hash

from .formats import (
    CSV_FORMATS,
    MAX_PROMPT_CHARS,
    CsvFormat,
    DatasetError,
    RowProblem,
    content_id,
    formats_help,
)

MAX_FILE_BYTES = 50 * 1024 * 1024

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_DELIMITER_NAMES = {",": "a comma", "\t": "a tab", ";": "a semicolon"}


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
    if isinstance(data, bytes):  # text handed over as str was decoded by the caller already
        _refuse_utf16_without_bom(raw, filename)
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


_SAVE_AS_UTF8 = "(Excel: 'CSV UTF-8 (Comma delimited)'; LibreOffice: character set 'Unicode (UTF-8)')"


def _encoding_of(raw: bytes) -> tuple[str, str, bytes]:
    """(codec, name shown to the user, the newline as that codec writes it): UTF-16 only with its BOM
    (Excel's "Unicode text"); everything else must be UTF-8, with or without a BOM."""
    if raw.startswith(codecs.BOM_UTF16_LE):
        return "utf-16", "UTF-16 (little-endian)", "\n".encode("utf-16-le")
    if raw.startswith(codecs.BOM_UTF16_BE):
        return "utf-16", "UTF-16 (big-endian)", "\n".encode("utf-16-be")
    return "utf-8-sig", "UTF-8", b"\n"


def _refuse_utf16_without_bom(raw: bytes, where: str) -> None:
    """ASCII text saved as UTF-16 without a BOM is valid UTF-8 with a NUL after every letter: it would
    decode "cleanly" into prompts full of NULs, so a file whose bytes are mostly NULs is refused."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or raw.count(0) * 4 < max(len(raw), 1):
        return
    raise DatasetError(
        f"{where} is mostly NUL bytes ({raw.count(0):,} of {len(raw):,}): it looks like UTF-16 without a "
        f"byte-order mark, or not a text file at all. Save it as UTF-8 {_SAVE_AS_UTF8}",
        line=1,
    )


def _decode(raw: bytes, where: str) -> str:
    """The file's text. Bytes that do not decode are refused with their line, never guessed at (a
    guessed Latin-1 would sweep mojibake prompts as if they were the user's)."""
    codec, shown, newline = _encoding_of(raw)
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(newline) + 1
        bad = raw[exc.start : min(exc.end, exc.start + 4)].hex(" ")
        raise DatasetError(
            f"{where} is not valid {shown} text: bytes {bad} on line {line} ({exc.reason}). Save it as "
            f"UTF-8 {_SAVE_AS_UTF8}",
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
        except RowProblem as problem:
            raise DatasetError(
                f"{record.where(filename)}: {problem}", row=record.row, line=record.line
            ) from None
        _check_unique(prompt, record, first_seen, filename)
        prompts.append(prompt)
    return prompts


def _cells(fields: Sequence[str], columns: Sequence[str], delimiter: str) -> dict[str, str]:
    extra = [field for field in fields[len(columns) :] if field.strip()]
    if extra:
        raise RowProblem(
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
    if prompt.prompt_id == content_id(prompt.text, prompt.context) and earlier.text == prompt.text:
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
