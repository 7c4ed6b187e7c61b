"""Exporting the results frame to CSV or Parquet, atomically."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from engine.store.analytics import StoreAnalytics
from engine.store.errors import StoreError

EXPORT_FORMATS = ("csv", "parquet")


class StoreExport(StoreAnalytics):
    def export(
        self, path: str | Path, fmt: str | None = None, *, prompt_sets: Sequence[str] | None = None
    ) -> Path:
        """Write :meth:`results_frame` to CSV or Parquet (format from ``fmt`` or the file suffix), only the
        named prompt sets when ``prompt_sets`` is given (a generation appears once per set it belongs to).

        In CSV, token ids are written space-separated. The file appears atomically.
        """
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt not in EXPORT_FORMATS:
            raise StoreError(f"cannot export to {fmt!r}: choose csv or parquet")
        frame = self.results_frame(prompt_sets=prompt_sets)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            if fmt == "csv":
                frame["token_ids"] = [" ".join(str(t) for t in ids) for ids in frame["token_ids"]]
                # pandas leaves a lone "\r" unquoted, which splits rows on reading: quote every string.
                frame.to_csv(temporary, index=False, quoting=csv.QUOTE_NONNUMERIC)
            else:
                frame.to_parquet(temporary, index=False)
            os.replace(temporary, path)
        except OSError as error:
            raise StoreError(f"cannot export to {path}: {error}") from error
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path
