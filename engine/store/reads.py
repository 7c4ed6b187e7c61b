"""Reading rows back as records: models, prompt sets, runs, completions, verdicts, probe results."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pandas as pd

from engine.store.connection import StoreConnection, translated
from engine.store.records import ProbeRecord, PromptSetVersion, StoredPromptSet
from engine.store.schema import TABLES
from engine.store.sql import (
    COMPLETION_COLUMNS,
    MODEL_COLUMNS,
    PROBE_COLUMNS,
    SET_VERSIONS,
    equal_filters,
    where,
)
from engine.store.writes import key_of
from engine.types import Completion, ModelInfo, Prompt, Verdict, completion_key


def _completion(row: tuple) -> Completion:
    """A stored row as a record; a NULL inside ``exit_layers`` (only a damaged or foreign database has
    one) reads as -1, a layer no token can exit at, which the pages show as not valid."""
    (
        model_hash,
        prompt_id,
        prompt_text,
        layers,
        params_hash,
        text,
        token_ids,
        seconds,
        truncated,
        nll,
        exits,
        acceptance,
        compute,
    ) = row
    return Completion(
        model_hash, prompt_id, prompt_text, int(layers), params_hash, text, tuple(token_ids), seconds,
        int(truncated), nll, tuple(-1 if k is None else int(k) for k in exits or ()), acceptance, compute,
    )  # fmt: skip


def _generation_filters(
    model_hash: str | None,
    layers: int | Iterable[int] | None,
    params_hash: str | None,
    prompt_keys: Iterable[str] | None,
) -> tuple[str, list[object]]:
    clauses, args = equal_filters([("model_hash", model_hash), ("params_hash", params_hash)])
    if layers is not None:
        clauses.append("layers IN (SELECT unnest(?::INTEGER[]))")
        args.append([int(layers)] if isinstance(layers, int) else [int(k) for k in layers])
    if prompt_keys is not None:
        clauses.append("prompt_key IN (SELECT unnest(?::VARCHAR[]))")
        args.append(list(prompt_keys))
    return where(clauses), args


class StoreReads(StoreConnection):
    """Lookups that return records (the DataFrame analytics live in :mod:`engine.store.analytics`)."""

    def _fetch_all(self, sql: str, args: Sequence[object] | None = None) -> list[tuple]:
        """Every row of one read query, on a cursor of its own."""
        with self._cursor() as cur:
            return cur.execute(sql, args).fetchall()

    def _fetch_one(self, sql: str, args: Sequence[object] | None = None) -> tuple | None:
        """The first row of one read query (None when there is none)."""
        with self._cursor() as cur:
            return cur.execute(sql, args).fetchone()

    @translated("listing models")
    def list_models(self) -> list[ModelInfo]:
        rows = self._fetch_all(f"SELECT {MODEL_COLUMNS} FROM models ORDER BY added_at, model_id")
        return [ModelInfo(*row) for row in rows]

    @translated("reading a model")
    def get_model(self, model_hash: str) -> ModelInfo | None:
        row = self._fetch_one(f"SELECT {MODEL_COLUMNS} FROM models WHERE model_hash = ?", [model_hash])
        return None if row is None else ModelInfo(*row)

    @translated("listing prompt sets")
    def list_prompt_sets(self) -> list[StoredPromptSet]:
        rows = self._fetch_all(
            "SELECT set_id, name, source, n_prompts, added_at FROM prompt_sets ORDER BY added_at, name"
        )
        return [StoredPromptSet(*row) for row in rows]

    @translated("listing prompt set versions")
    def list_prompt_set_versions(self) -> list[PromptSetVersion]:
        """Every version of every stored set, by name, then oldest version first (one per content)."""
        rows = self._fetch_all(
            f"SELECT DISTINCT ON (name, version) name, shown_name, version, n_versions, is_current, "
            f"n_prompts, content_hash, first_added, last_saved FROM ({SET_VERSIONS}) ORDER BY name, version"
        )
        return [PromptSetVersion(*row) for row in rows]

    @translated("reading prompts")
    def get_prompts(self, set_id: str) -> list[Prompt]:
        """The prompts of a set, in their original order (ids and labels as given in that set)."""
        rows = self._fetch_all(
            "SELECT m.prompt_id, p.text, coalesce(m.label, p.label), coalesce(m.category, p.category), "
            "p.context, p.source, coalesce(m.tags, p.tags) "
            "FROM prompt_set_members m JOIN prompts p USING (prompt_key) "
            "WHERE m.set_id = ? ORDER BY m.position",
            [set_id],
        )
        return [Prompt(*row) for row in rows]

    @translated("listing runs")
    def list_runs(self) -> pd.DataFrame:
        with self._cursor() as cur:
            return cur.execute(
                "SELECT run_id, started_at, finished_at, status, parameters, pid, host, heartbeat_at "
                "FROM runs ORDER BY started_at"
            ).df()

    @translated("finding missing generations")
    def missing_generations(
        self, model_hash: str, prompts: Iterable[Prompt | str], layers: Iterable[int], params_hash: str
    ) -> set[tuple[str, int]]:
        """The (prompt_key, layers) pairs that have no stored completion yet.

        A completion is identified exactly as :attr:`Completion.key` does: by the prompt's text.
        """
        wanted: dict[str, tuple[str, int]] = {}
        depths = [int(k) for k in layers]
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt.text
            for k in depths:
                wanted[completion_key(model_hash, text, k, params_hash)] = (key_of(prompt), k)
        present = {
            row[0]
            for row in self._fetch_all(
                "SELECT completion_key FROM generations "
                "WHERE completion_key IN (SELECT unnest(?::VARCHAR[]))",
                [list(wanted)],
            )
        }
        return {pair for key, pair in wanted.items() if key not in present}

    @translated("reading generations")
    def get_generations(
        self,
        *,
        model_hash: str | None = None,
        layers: int | Iterable[int] | None = None,
        params_hash: str | None = None,
        prompt_keys: Iterable[str] | None = None,
    ) -> list[Completion]:
        """Stored completions matching every given filter (all of them when none is given)."""
        filters, args = _generation_filters(model_hash, layers, params_hash, prompt_keys)
        rows = self._fetch_all(
            f"SELECT {COMPLETION_COLUMNS} FROM generations g {filters} "
            "ORDER BY model_hash, params_hash, prompt_key, layers",
            args,
        )
        return [_completion(row) for row in rows]

    @translated("reading a completion")
    def get_completion(self, key: str) -> Completion | None:
        row = self._fetch_one(f"SELECT {COMPLETION_COLUMNS} FROM generations WHERE completion_key = ?", [key])
        return None if row is None else _completion(row)

    @translated("finding missing verdicts")
    def missing_verdicts(self, completion_keys: Iterable[str], judge: str, version: str) -> set[str]:
        """The given completion keys that have no verdict from this judge version."""
        keys = set(completion_keys)
        judged = self._fetch_all(
            "SELECT completion_key FROM verdicts WHERE judge = ? AND version = ? "
            "AND completion_key IN (SELECT unnest(?::VARCHAR[]))",
            [judge, version, list(keys)],
        )
        return keys - {row[0] for row in judged}

    @translated("reading verdicts")
    def verdicts_for(
        self,
        completion_keys: Iterable[str] | None = None,
        *,
        judge: str | None = None,
        version: str | None = None,
    ) -> list[Verdict]:
        clauses, args = equal_filters([("judge", judge), ("version", version)])
        if completion_keys is not None:
            clauses.insert(0, "completion_key IN (SELECT unnest(?::VARCHAR[]))")
            args.insert(0, list(completion_keys))
        rows = self._fetch_all(
            "SELECT completion_key, judge, version, jailbroken, raw, degenerate, note, "
            "coalesce(degeneracy_version, '') FROM verdicts"
            f"{where(clauses)} ORDER BY completion_key, judge, version",
            args,
        )
        return [Verdict(*row) for row in rows]

    @translated("reading probe results")
    def get_probe_results(
        self, *, model_hash: str | None = None, set_id: str | None = None, kind: str | None = None
    ) -> list[ProbeRecord]:
        clauses, args = equal_filters([("model_hash", model_hash), ("set_id", set_id), ("kind", kind)])
        rows = self._fetch_all(
            f"SELECT {', '.join(PROBE_COLUMNS[:-1])} FROM probe_results{where(clauses)} "
            "ORDER BY model_hash, set_id, kind, layer",
            args,
        )
        return [ProbeRecord(*row[:-1], extra=json.loads(row[-1])) for row in rows]

    @translated("counting rows")
    def table_counts(self) -> dict[str, int]:
        with self._cursor() as cur:
            # Table names come from the TABLES constant, never from a caller.
            return {name: int(cur.execute(f"SELECT count(*) FROM {name}").fetchone()[0]) for name in TABLES}
