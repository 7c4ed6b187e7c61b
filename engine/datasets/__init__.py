"""Prompt sets: the built-in ones (shipped as files) and user CSVs, read into ``Prompt`` records.

* ``formats``: the accepted CSV layouts, the row checks and ``DatasetError``.
* ``csvfiles``: reading (and writing) prompt CSVs: decoding, cleaning, delimiter and header detection.
* ``registry``: the built-in sets (``BUILTIN_SETS``: sizes, sources, licences) and ``load_prompt_set``.
"""

from __future__ import annotations

from .csvfiles import MAX_FILE_BYTES, SIMPLE_COLUMNS, load_csv, parse_csv, prompt_set_id, to_csv
from .formats import (
    CSV_FORMATS,
    LABELS,
    MAX_ID_CHARS,
    MAX_PROMPT_CHARS,
    CsvFormat,
    DatasetError,
    formats_help,
)
from .registry import (
    BUILTIN_SETS,
    INSTALL_HINT,
    PromptSetInfo,
    builtin_set_path,
    list_prompt_sets,
    load_prompt_set,
    prompt_set_available,
)
from .uploads import upload_display_name, upload_file_name

__all__ = [
    "BUILTIN_SETS",
    "CSV_FORMATS",
    "INSTALL_HINT",
    "LABELS",
    "MAX_FILE_BYTES",
    "MAX_ID_CHARS",
    "MAX_PROMPT_CHARS",
    "SIMPLE_COLUMNS",
    "CsvFormat",
    "DatasetError",
    "PromptSetInfo",
    "builtin_set_path",
    "formats_help",
    "list_prompt_sets",
    "load_csv",
    "load_prompt_set",
    "parse_csv",
    "prompt_set_available",
    "prompt_set_id",
    "to_csv",
    "upload_display_name",
    "upload_file_name",
]
