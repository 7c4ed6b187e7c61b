"""Exporting the results frame to CSV or Parquet, atomically, never over the database or another file."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from engine.fileerrors import file_error_message
from engine.store.analytics import StoreAnalytics
from engine.store.errors import StoreError

EXPORT_FORMATS = ("csv", "parquet")
LIST_COLUMNS = ("token_ids", "exit_layers")  # JSON arrays in CSV; native lists in Parquet
# What makes a spreadsheet read a cell as a formula (OWASP's list, plus the full-width forms some
# spreadsheets also accept, plus a line feed).
FORMULA_STARTS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")


def neutralised_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula, made text by a leading apostrophe (also when
    spaces come first); anything else unchanged."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] in FORMULA_STARTS or value.lstrip()[:1] in FORMULA_STARTS:
        return "'" + value
    return value


def _json_list(value: object) -> str | None:
    """A stored list as a JSON array ("[4, 1, 2]"); a missing one stays an empty cell."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    return json.dumps([int(v) for v in value])


def csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """The results frame as CSV cells: list columns as JSON, every text cell formula-neutralised."""
    frame = frame.copy()
    for column in LIST_COLUMNS:
        if column in frame:
            frame[column] = frame[column].map(_json_list)
    for column in frame.columns:
        dtype = frame[column].dtype
        if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
            frame[column] = frame[column].astype(object).map(neutralised_cell)
    return frame


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (threads share it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: resolved (symlinks followed), or the same inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_the_database(path: Path, database: Path) -> None:
    if _same_file(path, database):
        raise StoreError(f"refusing to export to {path}: that is the database being read ({database})")


def _prepare_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise StoreError(
            f"cannot export to {path}: it is a folder; give a file name ending in .csv or .parquet"
        )
    if path.exists() and not overwrite:
        raise StoreError(f"{path} already exists; choose another --out or pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            file_error_message(error, f"create the folder {path.parent} for the export")
        ) from error


def _publish(temporary: str, path: Path, overwrite: bool) -> None:
    """Move the finished file into place; without ``overwrite`` a file appearing meanwhile is kept."""
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails if the name exists: no check-then-write race
    except FileExistsError as error:
        raise StoreError(
            f"{path} already exists; choose another --out or pass --force to replace it"
        ) from error
    except OSError:  # a file system without hard links
        if path.exists():
            raise StoreError(
                f"{path} already exists; choose another --out or pass --force to replace it"
            ) from None
        os.replace(temporary, path)


class StoreExport(StoreAnalytics):
    def export(
        self,
        path: str | Path,
        fmt: str | None = None,
        *,
        prompt_sets: Sequence[str] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write :meth:`results_frame` to CSV or Parquet (format from ``fmt`` or the file suffix), only the
        named prompt sets when ``prompt_sets`` is given (a generation appears once per set it belongs to).

        In CSV, list columns (token ids, exit layers) are JSON arrays and a text cell that a spreadsheet
        would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR, LF first) gets a leading apostrophe;
        Parquet keeps every value exact. The file appears atomically, with the user's
        usual permissions (umask). Never writes over the database itself; an existing file is replaced
        only with ``overwrite``. Missing parent folders are created.
        """
        path = Path(path)
        _refuse_the_database(path, self.path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt not in EXPORT_FORMATS:
            raise StoreError(f"cannot export to {fmt!r}: choose csv or parquet")
        _prepare_target(path, overwrite)
        frame = self.results_frame(prompt_sets=prompt_sets)
        try:
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as error:
            raise StoreError(file_error_message(error, f"write in {path.parent}")) from error
        os.close(handle)
        try:
            if fmt == "csv":
                # pandas leaves a lone "\r" unquoted, which splits rows on reading: quote every string.
                csv_ready(frame).to_csv(temporary, index=False, quoting=csv.QUOTE_NONNUMERIC)
            else:
                frame.to_parquet(temporary, index=False)
            os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; a user's files are not
            _publish(temporary, path, overwrite)
        except OSError as error:
            raise StoreError(file_error_message(error, f"export to {path}")) from error
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path
