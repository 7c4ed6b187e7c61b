"""SQL fragments and column lists shared by the reading and writing modules.

Only identifiers from these constants and fixed ``WHERE`` fragments are ever spliced into SQL;
values always travel as bound parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPT_COLUMNS = ("prompt_key", "prompt_id", "text", "label", "category", "context", "source", "tags")
MEMBER_COLUMNS = ("set_id", "prompt_key", "position", "prompt_id")
PROBE_COLUMNS = (
    "model_hash",
    "set_id",
    "layer",
    "kind",
    "accuracy",
    "accuracy_std",
    "auroc",
    "extra",
    "created_at",
)
COMPLETION_COLUMNS = (
    "model_hash, prompt_id, prompt_text, layers, params_hash, text, token_ids, seconds, full_depth_nll"
)
MODEL_COLUMNS = "model_id, model_hash, architecture, n_layers, hidden_size, dtype, device"

# Generations with the label/category of their prompt: matched by key, else by text (harmful wins),
# so a generation still finds its label if the caller keyed it differently.
LABELLED_GENERATIONS = """
    SELECT g.*, coalesce(pk.label, pt.label) AS label, coalesce(pk.category, pt.category) AS category
    FROM generations g
    LEFT JOIN prompts pk ON pk.prompt_key = g.prompt_key
    LEFT JOIN (
        SELECT text,
               CASE WHEN bool_or(label = 'harmful') THEN 'harmful' ELSE min(label) END AS label,
               min(category) AS category
        FROM prompts GROUP BY text
    ) pt ON pt.text = g.prompt_text
"""

# A generation belongs to a set when its prompt key, or else its prompt text, is a member (two ``?``).
IN_SET = (
    "(g.prompt_key IN (SELECT prompt_key FROM prompt_set_members WHERE set_id = ?) "
    "OR g.prompt_text IN (SELECT p.text FROM prompt_set_members s JOIN prompts p USING (prompt_key) "
    "WHERE s.set_id = ?))"
)


def where(clauses: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def equal_filters(pairs: Sequence[tuple[str, object]]) -> tuple[list[str], list[object]]:
    """``column = ?`` clauses and their arguments for the (column, value) pairs whose value is given."""
    clauses: list[str] = []
    args: list[object] = []
    for column, value in pairs:
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return clauses, args
