"""Every write: short transactions, insert-if-absent by natural key, counts of new rows.

Each batch is written in one transaction, so a crash leaves the whole batch or none of it; re-saving
cached work inserts nothing and each ``save_*`` call returns how many rows were new.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from engine.judges.names import HUMAN
from engine.store.connection import StoreConnection, translated, utc_now
from engine.store.errors import StoreError
from engine.store.records import ProbeRecord, SavedPromptSet
from engine.store.sql import MEMBER_COLUMNS, PROBE_COLUMNS, PROMPT_COLUMNS
from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict, prompt_key, stable_hash

HUMAN_JUDGE = HUMAN  # the one judge whose verdicts may be overwritten (a person changed their mind)

_GENERATION_SCHEMA = pa.schema(
    [
        ("completion_key", pa.string()),
        ("model_hash", pa.string()),
        ("prompt_key", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt_text", pa.string()),
        ("layers", pa.int32()),
        ("params_hash", pa.string()),
        ("params", pa.string()),
        ("text", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("seconds", pa.float64()),
        ("created_at", pa.timestamp("us")),
        ("run_id", pa.string()),
        ("prompt_truncated_tokens", pa.int32()),
        ("full_depth_nll", pa.float64()),
        ("exit_layers", pa.list_(pa.int32())),
        ("mean_exit_layers", pa.float64()),
        ("acceptance_rate", pa.float64()),
        ("layer_compute", pa.float64()),
    ]
)
_VERDICT_SCHEMA = pa.schema(
    [
        ("completion_key", pa.string()),
        ("judge", pa.string()),
        ("version", pa.string()),
        ("jailbroken", pa.bool_()),
        ("raw", pa.string()),
        ("degenerate", pa.bool_()),
        ("note", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("degeneracy_version", pa.string()),
    ]
)
_PROMPT_SCHEMA = pa.schema([(c, pa.string()) for c in PROMPT_COLUMNS])
_MEMBER_SCHEMA = pa.schema(
    [
        ("set_id", pa.string()),
        ("prompt_key", pa.string()),
        ("position", pa.int32()),
        ("prompt_id", pa.string()),
        ("label", pa.string()),
        ("category", pa.string()),
        ("tags", pa.string()),
    ]
)
_PROBE_SCHEMA = pa.schema(
    [
        ("model_hash", pa.string()),
        ("set_id", pa.string()),
        ("layer", pa.int32()),
        ("kind", pa.string()),
        ("accuracy", pa.float64()),
        ("accuracy_std", pa.float64()),
        ("auroc", pa.float64()),
        ("extra", pa.string()),
        ("created_at", pa.timestamp("us")),
    ]
)
# A human label replaces an earlier one only when something about it changed.
_OVERWRITE_HUMAN_LABEL = (
    "(completion_key, judge, version) DO UPDATE SET jailbroken = excluded.jailbroken, "
    "raw = excluded.raw, degenerate = excluded.degenerate, note = excluded.note, "
    "created_at = excluded.created_at, degeneracy_version = excluded.degeneracy_version "
    "WHERE verdicts.jailbroken IS DISTINCT FROM excluded.jailbroken OR verdicts.raw <> excluded.raw "
    "OR verdicts.degenerate <> excluded.degenerate OR verdicts.note <> excluded.note "
    "OR verdicts.degeneracy_version IS DISTINCT FROM excluded.degeneracy_version"
)
# A machine verdict is never re-decided (same judge version, same decision), but its incoherence flag
# is re-computed when the detector changed: only the flag, its note and the detector version move.
_REFRESH_DEGENERACY_FLAG = (
    "(completion_key, judge, version) DO UPDATE SET degenerate = excluded.degenerate, "
    "note = excluded.note, degeneracy_version = excluded.degeneracy_version "
    "WHERE excluded.degeneracy_version <> '' "
    "AND verdicts.degeneracy_version IS DISTINCT FROM excluded.degeneracy_version"
)


# A running run on another host is presumed dead after this long without a heartbeat (one per stored
# batch). On this host the process check decides, however long the run has been silent.
STALE_RUN_AFTER = timedelta(hours=1)
_PROC = Path("/proc")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours
    except OSError:
        return False
    return True


def process_started(pid: int) -> str | None:
    """When process ``pid`` started, as "boot id:clock ticks after boot" (Linux ``/proc``); None where
    the system does not say or no such process exists. With the pid it names one process, even after
    the pid is reused or the machine restarts."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and brackets
        return f"{boot}:{int(fields[19])}"  # field 22 of stat, counting from the pid
    except (OSError, ValueError, IndexError):
        return None


def run_is_stale(
    pid: int | None, host: str | None, last_seen: datetime, now: datetime, started: str | None = None
) -> bool:
    """Whether a 'running' run's process is gone. On this host the process decides: dead, or its pid
    now belongs to a process that started at another time; elsewhere, no heartbeat for an hour."""
    if pid is not None and host == socket.gethostname():
        if not process_alive(pid):
            return True
        now_started = process_started(pid) if started else None
        return now_started is not None and now_started != started
    return now - last_seen > STALE_RUN_AFTER


def key_of(prompt: Prompt | str) -> str:
    """The stored prompt key of a prompt, or of a bare prompt text (no context)."""
    return prompt_key(prompt) if isinstance(prompt, str) else prompt_key(prompt.text, prompt.context)


def _table(rows: list[dict[str, Any]], columns: Sequence[str], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{c: row[c] for c in columns} for row in rows], schema=schema)


def _verdict_row(verdict: Verdict, now: datetime) -> dict[str, Any]:
    return asdict(verdict) | {"created_at": now}


def _probe_row(record: ProbeRecord, now: datetime) -> dict[str, Any]:
    return {
        "model_hash": record.model_hash,
        "set_id": record.set_id,
        "layer": int(record.layer),
        "kind": record.kind,
        "accuracy": float(record.accuracy),
        "accuracy_std": None if record.accuracy_std is None else float(record.accuracy_std),
        "auroc": None if record.auroc is None else float(record.auroc),
        "extra": json.dumps(dict(record.extra), sort_keys=True, default=str),
        "created_at": now,
    }


class StoreWrites(StoreConnection):
    """The ``save_*`` methods and run bookkeeping."""

    @staticmethod
    def _insert_new(
        cur: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, on_conflict: str = "DO NOTHING"
    ) -> int:
        """INSERT the Arrow rows, skipping keys already present; returns how many rows were written."""
        if rows.num_rows == 0:
            return 0
        columns = ", ".join(rows.column_names)
        cur.register("incoming_rows", rows)
        try:
            # Only identifiers from this package's constants are spliced in; the values come from Arrow.
            sql = (
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_rows "
                f"ON CONFLICT {on_conflict} RETURNING 1"
            )
            return len(cur.execute(sql).fetchall())
        finally:
            cur.unregister("incoming_rows")

    @translated("saving a model")
    def save_model(self, info: ModelInfo) -> int:
        """Remember a model (insert if absent). Returns 1 if it was new."""
        row = asdict(info) | {"added_at": utc_now()}
        with self._transaction() as cur:
            return self._insert_new(cur, "models", pa.Table.from_pylist([row]))

    @translated("saving a prompt set")
    def save_prompt_set(
        self, name: str, prompts: Sequence[Prompt], *, source: str = "", set_id: str | None = None
    ) -> SavedPromptSet:
        """Store a prompt set version and its prompts, and make it the set's current version.

        A version is the name plus the content (each member's key, id, label, category, tags): the same
        content again is the same version (only marked current), changed content a new one. ``set_id``
        defaults to a hash of the name and prompt keys (as before versions existed), or, when that id
        already holds other content (a relabelled file), of the name, keys and content hash.
        """
        members: dict[str, Prompt] = {}
        for prompt in prompts:
            members.setdefault(key_of(prompt), prompt)  # a duplicate prompt keeps its first position
        member_rows = [
            # The label is the prompt's label in this version; ``prompts.label`` keeps the first one seen.
            {
                "prompt_key": key,
                "position": position,
                "prompt_id": p.prompt_id,
                "label": p.label,
                "category": p.category,
                "tags": p.tags,
            }
            for position, (key, p) in enumerate(members.items())
        ]
        content = members_content_hash(member_rows)
        prompt_rows = [
            {"prompt_key": key} | {column: getattr(p, column) for column in PROMPT_COLUMNS[1:]}
            for key, p in members.items()
        ]
        now = utc_now()
        with self._transaction() as cur:
            known = self._version_set_id(cur, name, content)
            if known is not None and set_id in (None, known):
                cur.execute(
                    "UPDATE prompt_sets SET saved_at = ? WHERE name = ? AND content_hash = ?",
                    [now, name, content],
                )
                return SavedPromptSet(known, 0, False)
            set_id = set_id or self._free_set_id(cur, name, list(members), content)
            set_row = {
                "set_id": set_id, "name": name, "source": source, "n_prompts": len(members),
                "added_at": now, "content_hash": content, "saved_at": now,
            }  # fmt: skip
            new_set = self._insert_new(cur, "prompt_sets", pa.Table.from_pylist([set_row]))
            cur.execute(
                "UPDATE prompt_sets SET saved_at = ? WHERE name = ? AND content_hash = ?",
                [now, name, content],
            )
            new_prompts = self._insert_new(
                cur, "prompts", _table(prompt_rows, PROMPT_COLUMNS, _PROMPT_SCHEMA)
            )
            rows = [{"set_id": set_id} | row for row in member_rows]
            self._insert_new(cur, "prompt_set_members", _table(rows, MEMBER_COLUMNS, _MEMBER_SCHEMA))
        return SavedPromptSet(set_id, new_prompts, bool(new_set))

    @staticmethod
    def _version_set_id(cur: duckdb.DuckDBPyConnection, name: str, content: str) -> str | None:
        """The set id already holding this version of ``name`` (the first stored), if any."""
        rows = cur.execute(  # fetchall: a half-read result would block the transaction's next statement
            "SELECT set_id FROM prompt_sets WHERE name = ? AND content_hash = ? ORDER BY added_at LIMIT 1",
            [name, content],
        ).fetchall()
        return str(rows[0][0]) if rows else None

    @staticmethod
    def _free_set_id(cur: duckdb.DuckDBPyConnection, name: str, keys: list[str], content: str) -> str:
        """The id a new version gets: the pre-version id when it is free, else one naming its content."""
        legacy = stable_hash(["prompt_set", name, keys])
        taken = cur.execute("SELECT 1 FROM prompt_sets WHERE set_id = ?", [legacy]).fetchall()
        return stable_hash(["prompt_set", name, keys, content]) if taken else legacy

    @translated("starting a run")
    def start_run(self, parameters: Mapping[str, Any], *, run_id: str | None = None) -> str:
        """Record that a run began (with this process id and host, to tell later if it died); its id."""
        run_id = run_id or uuid.uuid4().hex[:16]
        now = utc_now()
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO runs (run_id, started_at, parameters, status, pid, host, heartbeat_at, "
                "process_started) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                [
                    run_id,
                    now,
                    json.dumps(dict(parameters), sort_keys=True, default=str),
                    os.getpid(),
                    socket.gethostname(),
                    now,
                    process_started(os.getpid()),
                ],
            )
        return run_id

    @translated("finishing a run")
    def finish_run(self, run_id: str, status: str = "done") -> None:
        with self._transaction() as cur:
            updated = cur.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ? RETURNING 1",
                [status, utc_now(), run_id],
            ).fetchall()
        if not updated:
            raise StoreError(f"no run {run_id!r} in {self.path}")

    @staticmethod
    def _touch_run(cur: duckdb.DuckDBPyConnection, run_id: str | None) -> None:
        if run_id is not None:
            cur.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [utc_now(), run_id])

    @translated("recording that a run is alive")
    def heartbeat(self, run_id: str) -> None:
        """A sign of life for a running run (saving its generations gives one too)."""
        with self._transaction() as cur:
            self._touch_run(cur, run_id)

    @translated("marking stale runs")
    def mark_stale_runs(self) -> list[str]:
        """Mark 'running' runs as 'interrupted' when their process is gone: on this host dead or its pid
        reused (process start time), on another host silent for :data:`STALE_RUN_AFTER`."""
        now = utc_now()
        with self._transaction() as cur:
            running = cur.execute(
                "SELECT run_id, pid, host, coalesce(heartbeat_at, started_at), process_started FROM runs "
                "WHERE status = 'running'"
            ).fetchall()
            stale = [
                run_id
                for run_id, pid, host, seen, started in running
                if run_is_stale(pid, host, seen, now, started)
            ]
            for run_id in stale:
                cur.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ? WHERE run_id = ?", [now, run_id]
                )
        return stale

    @translated("saving generations")
    def save_generations(
        self,
        completions: Sequence[Completion],
        *,
        params: GenerationParams | None = None,
        run_id: str | None = None,
        prompt_keys: Sequence[str] | None = None,
    ) -> int:
        """Store completions (one transaction); returns how many were new.

        ``prompt_keys`` (aligned with ``completions``) names the stored prompt each completion came
        from; by default it is ``prompt_key(completion.prompt_text)``, right for prompts without context.
        """
        if prompt_keys is not None and len(prompt_keys) != len(completions):
            raise StoreError(f"got {len(prompt_keys)} prompt keys for {len(completions)} completions")
        params_json = None
        if params is not None:
            params_json = json.dumps(asdict(params), sort_keys=True)
            stray = {c.params_hash for c in completions} - {params.key()}
            if stray:
                raise StoreError(
                    f"completions with params_hash {sorted(stray)} do not match params {params.key()}"
                )
        keys = (
            list(prompt_keys) if prompt_keys is not None else [prompt_key(c.prompt_text) for c in completions]
        )
        now = utc_now()
        rows = [
            {
                "completion_key": c.key,
                "model_hash": c.model_hash,
                "prompt_key": key,
                "prompt_id": c.prompt_id,
                "prompt_text": c.prompt_text,
                "layers": int(c.layers),
                "params_hash": c.params_hash,
                "params": params_json,
                "text": c.text,
                "token_ids": [int(t) for t in c.token_ids],
                "seconds": float(c.seconds),
                "created_at": now,
                "run_id": run_id,
                "prompt_truncated_tokens": int(c.prompt_truncated_tokens),
                "full_depth_nll": None if c.full_depth_nll is None else float(c.full_depth_nll),
                "exit_layers": [int(k) for k in c.exit_layers] or None,
                "mean_exit_layers": float(c.mean_exit_layers),
                "acceptance_rate": c.acceptance_rate,
                "layer_compute": c.layer_compute,
            }
            for c, key in zip(completions, keys, strict=True)
        ]
        with self._transaction() as cur:
            self._touch_run(cur, run_id)
            return self._insert_new(cur, "generations", pa.Table.from_pylist(rows, schema=_GENERATION_SCHEMA))

    @translated("saving verdicts")
    def save_verdicts(self, verdicts: Sequence[Verdict]) -> int:
        """Store verdicts in one transaction; returns how many rows were written.

        Machine verdicts are insert-if-absent, except that a stored one whose incoherence flag came
        from another detector version takes the new flag (and only the flag: see
        ``_REFRESH_DEGENERACY_FLAG``). Human labels (judge == HUMAN_JUDGE) replace an earlier human
        label when they differ. A replaced label or refreshed flag counts as written.
        """
        now = utc_now()
        machine = [_verdict_row(v, now) for v in verdicts if v.judge != HUMAN_JUDGE]
        # The last human label for a completion wins; DuckDB cannot upsert one row twice per statement.
        human = {
            (v.completion_key, v.version): _verdict_row(v, now) for v in verdicts if v.judge == HUMAN_JUDGE
        }
        with self._transaction() as cur:
            written = self._insert_new(
                cur,
                "verdicts",
                pa.Table.from_pylist(machine, schema=_VERDICT_SCHEMA),
                on_conflict=_REFRESH_DEGENERACY_FLAG,
            )
            human_rows = pa.Table.from_pylist(list(human.values()), schema=_VERDICT_SCHEMA)
            return written + self._insert_new(cur, "verdicts", human_rows, on_conflict=_OVERWRITE_HUMAN_LABEL)

    @translated("saving full-depth NLL scores")
    def save_full_depth_nll(self, scores: Mapping[str, float | None]) -> int:
        """Fill in the full-depth NLL of stored completions (completion key -> nats/token) that have none;
        returns how many rows took a score. A stored score is never overwritten (it is deterministic)."""
        rows = [(key, float(value)) for key, value in scores.items() if value is not None]
        if not rows:
            return 0
        table = pa.table(
            {"completion_key": [k for k, _ in rows], "full_depth_nll": [v for _, v in rows]},
            schema=pa.schema([("completion_key", pa.string()), ("full_depth_nll", pa.float64())]),
        )
        with self._transaction() as cur:
            cur.register("incoming_scores", table)
            try:
                return len(
                    cur.execute(
                        "UPDATE generations g SET full_depth_nll = s.full_depth_nll FROM incoming_scores s "
                        "WHERE g.completion_key = s.completion_key AND g.full_depth_nll IS NULL RETURNING 1"
                    ).fetchall()
                )
            finally:
                cur.unregister("incoming_scores")

    @translated("saving probe results")
    def save_probe_results(self, results: Iterable[ProbeRecord], *, replace: bool = False) -> int:
        """Store probe results (insert if absent, or overwrite with ``replace``); returns rows written."""
        now = utc_now()
        # One row per natural key: the last record for a key wins.
        rows = {(r.model_hash, r.set_id, int(r.layer), r.kind): _probe_row(r, now) for r in results}
        on_conflict = "DO NOTHING"
        if replace:
            updates = ", ".join(f"{c} = excluded.{c}" for c in PROBE_COLUMNS[4:])
            on_conflict = f"(model_hash, set_id, layer, kind) DO UPDATE SET {updates}"
        with self._transaction() as cur:
            return self._insert_new(
                cur, "probe_results", _table(list(rows.values()), PROBE_COLUMNS, _PROBE_SCHEMA), on_conflict
            )


def members_content_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """A set version's content hash: the same as ``sql.MEMBERS_CONTENT_HASH`` over its member rows."""
    fields = ("prompt_key", "prompt_id", "label", "category", "tags")
    lines = sorted("\x1f".join(str(row.get(f) or "") for f in fields) for row in rows)
    # Sorted by prompt key (the first field, fixed-length hex), as the SQL aggregate orders them.
    return hashlib.md5("\x1e".join(lines).encode("utf-8")).hexdigest()[:16]  # noqa: S324 — not security
