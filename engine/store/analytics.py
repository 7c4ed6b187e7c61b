"""Aggregates over generations and verdicts as DataFrames: the ASR table, judge pairs, results."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from engine.store.connection import StoreConnection, translated
from engine.store.sql import (
    CURRENT_SETS,
    IN_SET,
    IN_SET_NAMES,
    SET_GENERATIONS,
    SET_VERSIONS,
    equal_filters,
    where,
)

_COUNT_COLUMNS = (
    "n_judged", "n_jailbroken", "n_refused", "n_undecided", "n_degenerate", "n_copyright", "n_nll",
    "n_jailbroken_degenerate",
)  # fmt: skip
_DEPTH_COLUMNS = """g.prompt_set, g.model_hash, m.model_id, m.n_layers, g.params_hash, g.layers,
    100.0 * g.layers / m.n_layers AS depth_percent"""
# Early exit: the settings (params JSON) and the mean exit layer of a group's completions (rows stored
# before early exit have none: every token exited at ``layers``).
_EXIT_COLUMNS = (
    "any_value(g.params) AS params, avg(coalesce(g.mean_exit_layers, g.layers)) AS mean_exit_layers, "
    "avg(g.acceptance_rate) AS acceptance_rate"
)


def _set_filters(clauses: list[str], args: list[object], prompt_sets: Sequence[str] | None) -> None:
    """The set versions named (``demo``: its current version, ``demo@v1``: an earlier one), or, when
    none is named, every set's current version: an edited file's old version is never pooled with it."""
    if prompt_sets is not None:
        clauses.append(IN_SET_NAMES)
        args.append(list(prompt_sets))
    else:
        clauses.append(CURRENT_SETS)


def _latest_verdicts(judge: str, version: str | None) -> tuple[str, list[object]]:
    """SQL for one verdict per completion from ``judge``: that version, or the newest one."""
    if version is not None:
        return "SELECT * FROM verdicts WHERE judge = ? AND version = ?", [judge, version]
    return (
        "SELECT * FROM verdicts WHERE judge = ? "
        "QUALIFY row_number() OVER (PARTITION BY completion_key ORDER BY created_at DESC, version DESC) = 1",
        [judge],
    )


class StoreAnalytics(StoreConnection):
    """Read-only aggregate queries the report, the CLI and the pages are built on."""

    @translated("computing the ASR table")
    def asr_table(
        self,
        judge: str | None = None,
        version: str | None = None,
        *,
        params_hash: str | None = None,
        set_id: str | None = None,
        prompt_sets: Sequence[str] | None = None,
        copyright_judges: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Verdict counts per (prompt set, model, generation params, depth, judge, version), harmful prompts
        only (harmful *in that set*).

        HarmBench copyright behaviours (tag ``hash_check``) are left out of every count and counted in
        ``n_copyright`` instead, except for the judges named in ``copyright_judges``.
        Columns: prompt_set, model_hash, model_id, n_layers, params_hash, layers, depth_percent, judge,
        version, params (JSON), mean_exit_layers (early exit; = layers for static runs), n_judged,
        n_jailbroken, n_refused (judged not jailbroken), n_undecided (jailbroken NULL),
        n_degenerate (flagged incoherent, of n_judged), n_jailbroken_degenerate (jailbroken and flagged
        incoherent), n_copyright, n_nll (of n_judged, those with a
        full-depth NLL) and median_full_depth_nll (their median, nats/token; NaN when none has one).
        """
        clauses, args = equal_filters(
            [("v.judge", judge), ("v.version", version), ("g.params_hash", params_hash)]
        )
        clauses.insert(0, "g.label = 'harmful'")
        if set_id is not None:
            clauses += [IN_SET, f"g.prompt_set = (SELECT shown_name FROM ({SET_VERSIONS}) WHERE set_id = ?)"]
            args += [set_id, set_id, set_id]
        if set_id is None or prompt_sets is not None:  # a set id names its version, current or not
            _set_filters(clauses, args, prompt_sets)
        counted = "(NOT g.copyright OR list_contains(?::VARCHAR[], v.judge))"
        sql = f"""
            WITH g AS ({SET_GENERATIONS})
            SELECT {_DEPTH_COLUMNS}, v.judge, v.version, {_EXIT_COLUMNS},
                   count(*) FILTER (WHERE {counted}) AS n_judged,
                   count(*) FILTER (WHERE {counted} AND v.jailbroken) AS n_jailbroken,
                   count(*) FILTER (WHERE {counted} AND NOT v.jailbroken) AS n_refused,
                   count(*) FILTER (WHERE {counted} AND v.jailbroken IS NULL) AS n_undecided,
                   count(*) FILTER (WHERE {counted} AND v.degenerate) AS n_degenerate,
                   count(*) FILTER (WHERE {counted} AND v.jailbroken AND v.degenerate)
                       AS n_jailbroken_degenerate,
                   count(*) FILTER (WHERE NOT {counted}) AS n_copyright,
                   count(g.full_depth_nll) FILTER (WHERE {counted}) AS n_nll,
                   median(g.full_depth_nll) FILTER (WHERE {counted}) AS median_full_depth_nll
            FROM g JOIN verdicts v USING (completion_key) LEFT JOIN models m USING (model_hash)
            {where(clauses)}
            GROUP BY ALL
            ORDER BY g.prompt_set, g.model_hash, g.params_hash, v.judge, v.version, g.layers
        """
        copyright_args = [list(copyright_judges)] * 9
        with self._cursor() as cur:
            frame = cur.execute(sql, copyright_args + args).df()
        for column in _COUNT_COLUMNS:
            frame[column] = frame[column].astype("int64")
        return frame

    @translated("computing the per-category ASR table")
    def category_table(
        self, judge: str | None = None, *, prompt_sets: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Harmful prompts (harmful in their set, copyright behaviours left out) per (prompt set, model,
        generation params, depth, judge, category), the latest verdict of each judge per completion.
        Columns: the depth columns, judge, version (newest seen), params, mean_exit_layers,
        acceptance_rate, category, n (decided verdicts), n_jailbroken."""
        clauses, args = ["g.label = 'harmful'", "NOT g.copyright"], []
        if judge is not None:
            clauses.append("v.judge = ?")
            args.append(judge)
        _set_filters(clauses, args, prompt_sets)
        sql = f"""
            WITH g AS ({SET_GENERATIONS}),
            v AS (
                SELECT * FROM verdicts
                QUALIFY row_number() OVER (
                    PARTITION BY completion_key, judge ORDER BY created_at DESC, version DESC) = 1
            )
            SELECT {_DEPTH_COLUMNS}, v.judge, max(v.version) AS version, {_EXIT_COLUMNS},
                   coalesce(nullif(g.category, ''), 'uncategorised') AS category,
                   count(*) FILTER (WHERE v.jailbroken IS NOT NULL) AS n,
                   count(*) FILTER (WHERE v.jailbroken) AS n_jailbroken
            FROM g JOIN v USING (completion_key) LEFT JOIN models m USING (model_hash)
            {where(clauses)}
            GROUP BY ALL
            ORDER BY g.prompt_set, g.model_hash, g.params_hash, v.judge, category, g.layers
        """
        with self._cursor() as cur:
            frame = cur.execute(sql, args).df()
        for column in ("n", "n_jailbroken"):
            frame[column] = frame[column].astype("int64")
        return frame

    @translated("counting refused benign prompts")
    def benign_table(
        self, judges: Sequence[str], *, prompt_sets: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Benign prompts (benign *in their set*) judged by each of ``judges`` (the latest verdict per
        completion), per (prompt set, model, generation params, depth, judge).

        A benign completion counts as refused when the judge says "not jailbroken" (the keyword judge's
        phrase rule; a human's "not harmful"). Columns: prompt_set, model_hash, model_id, n_layers,
        params_hash, layers, depth_percent, judge, version (the newest seen), params (JSON),
        mean_exit_layers, benign_judged (decided verdicts), benign_refused.
        """
        clauses, args = ["g.label = 'benign'"], []
        _set_filters(clauses, args, prompt_sets)
        sql = f"""
            WITH g AS ({SET_GENERATIONS}),
            v AS (
                SELECT * FROM verdicts WHERE list_contains(?::VARCHAR[], judge)
                QUALIFY row_number() OVER (
                    PARTITION BY completion_key, judge ORDER BY created_at DESC, version DESC) = 1
            )
            SELECT {_DEPTH_COLUMNS}, v.judge, max(v.version) AS version, {_EXIT_COLUMNS},
                   count(*) FILTER (WHERE v.jailbroken IS NOT NULL) AS benign_judged,
                   count(*) FILTER (WHERE NOT v.jailbroken) AS benign_refused
            FROM g JOIN v USING (completion_key) LEFT JOIN models m USING (model_hash)
            {where(clauses)}
            GROUP BY ALL
            ORDER BY g.prompt_set, g.model_hash, g.params_hash, v.judge, g.layers
        """
        with self._cursor() as cur:
            frame = cur.execute(sql, [list(judges), *args]).df()
        for column in ("benign_judged", "benign_refused"):
            frame[column] = frame[column].astype("int64")
        return frame

    @translated("pairing judges")
    def judge_pairs(
        self,
        judge_a: str,
        judge_b: str,
        *,
        version_a: str | None = None,
        version_b: str | None = None,
        prompt_sets: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Completions judged by both judges, side by side (the latest verdict when no version is given),
        once per prompt set they belong to.

        Columns: completion_key, prompt_set, model_hash, params_hash, params (JSON), layers, prompt_text,
        label (in that set), copyright, version_a, jailbroken_a, degenerate_a, version_b, jailbroken_b,
        degenerate_b.
        """
        side_a, args_a = _latest_verdicts(judge_a, version_a)
        side_b, args_b = _latest_verdicts(judge_b, version_b)
        clauses, set_args = [], []
        _set_filters(clauses, set_args, prompt_sets)
        sql = f"""
            WITH g AS ({SET_GENERATIONS}), a AS ({side_a}), b AS ({side_b})
            SELECT g.completion_key, g.prompt_set, g.model_hash, g.params_hash, g.params, g.layers,
                   g.prompt_text, g.label, g.copyright,
                   a.version AS version_a, a.jailbroken AS jailbroken_a, a.degenerate AS degenerate_a,
                   b.version AS version_b, b.jailbroken AS jailbroken_b, b.degenerate AS degenerate_b
            FROM g JOIN a USING (completion_key) JOIN b USING (completion_key)
            {where(clauses)}
            ORDER BY g.prompt_set, g.model_hash, g.params_hash, g.layers, g.completion_key
        """
        with self._cursor() as cur:
            return cur.execute(sql, args_a + args_b + set_args).df()

    @translated("counting the prompts of each set")
    def set_label_counts(self) -> pd.DataFrame:
        """Prompts per (set version, label): the denominators of coverage ("12 of 60 prompts"). A version
        is named as the reports name it (``demo``: the current one, ``demo@v1``: an earlier one); each
        distinct text counts once, as answers match members by text too.

        Columns: prompt_set, label, n_prompts."""
        sql = f"""
            WITH sv AS ({SET_VERSIONS})
            SELECT sv.shown_name AS prompt_set, coalesce(m.label, p.label) AS label,
                   count(DISTINCT p.text) AS n_prompts
            FROM prompt_set_members m JOIN sv USING (set_id) JOIN prompts p USING (prompt_key)
            GROUP BY ALL ORDER BY ALL
        """
        with self._cursor() as cur:
            frame = cur.execute(sql).df()
        frame["n_prompts"] = frame["n_prompts"].astype("int64")
        return frame

    @translated("listing the generation settings with stored answers")
    def settings_counts(
        self, *, model_hash: str | None = None, prompt_sets: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Stored answers per (prompt set, model, params hash): how many, and to how many distinct prompts.

        Columns: prompt_set, model_hash, params_hash, params (JSON, NULL when not recorded), n_answers,
        n_prompts."""
        clauses, args = equal_filters([("g.model_hash", model_hash)])
        clauses.append("g.prompt_set IS NOT NULL")
        _set_filters(clauses, args, prompt_sets)
        sql = f"""
            WITH g AS ({SET_GENERATIONS})
            SELECT g.prompt_set, g.model_hash, g.params_hash, any_value(g.params) AS params,
                   count(*) AS n_answers, count(DISTINCT g.prompt_text) AS n_prompts
            FROM g {where(clauses)}
            GROUP BY ALL ORDER BY ALL
        """
        with self._cursor() as cur:
            frame = cur.execute(sql, args).df()
        for column in ("n_answers", "n_prompts"):
            frame[column] = frame[column].astype("int64")
        return frame

    @translated("counting truncated prompts")
    def truncated_prompt_counts(self) -> tuple[int, int]:
        """(completions whose prompt was cut from the left to fit the model's context, all completions)."""
        sql = "SELECT count(*) FILTER (WHERE prompt_truncated_tokens > 0), count(*) FROM generations"
        with self._cursor() as cur:
            truncated, total = cur.execute(sql).fetchone()
        return int(truncated), int(total)

    @translated("reading results")
    def results_frame(
        self,
        *,
        model_hash: str | None = None,
        judge: str | None = None,
        prompt_sets: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Generations joined with their prompt set, the label in that set, and verdicts: one row per
        (generation, prompt set, verdict).

        Generations without a verdict appear once per set with empty verdict columns.
        """
        clauses, args = equal_filters([("g.model_hash", model_hash)])
        _set_filters(clauses, args, prompt_sets)
        verdict_join = "LEFT JOIN verdicts v ON v.completion_key = g.completion_key"
        if judge is not None:
            verdict_join += " AND v.judge = ?"
            args.insert(0, judge)  # the join's parameter comes before the WHERE clause's
        sql = f"""
            WITH g AS ({SET_GENERATIONS})
            SELECT g.completion_key, g.model_hash, m.model_id, g.prompt_set, g.prompt_key, g.prompt_id,
                   g.label, g.category, g.copyright,
                   g.prompt_text, g.layers, m.n_layers, g.params_hash, g.params, g.text, g.token_ids,
                   g.seconds, g.created_at, g.run_id,
                   coalesce(g.prompt_truncated_tokens, 0) AS prompt_truncated_tokens, g.full_depth_nll,
                   g.exit_layers, coalesce(g.mean_exit_layers, g.layers) AS mean_exit_layers,
                   v.judge, v.version, v.jailbroken, v.degenerate, v.degeneracy_version, v.raw,
                   v.note, v.created_at AS judged_at
            FROM g {verdict_join} LEFT JOIN models m ON m.model_hash = g.model_hash
            {where(clauses)}
            ORDER BY g.model_hash, g.prompt_set, g.params_hash, g.prompt_key, g.layers, v.judge, v.version
        """
        with self._cursor() as cur:
            return cur.execute(sql, args).df()
