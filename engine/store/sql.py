"""SQL fragments and column lists shared by the reading and writing modules.

Only identifiers from these constants and fixed ``WHERE`` fragments are ever spliced into SQL;
values always travel as bound parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPT_COLUMNS = ("prompt_key", "prompt_id", "text", "label", "category", "context", "source", "tags")
MEMBER_COLUMNS = ("set_id", "prompt_key", "position", "prompt_id", "label")
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
    "model_hash, prompt_id, prompt_text, layers, params_hash, text, token_ids, seconds, "
    "coalesce(prompt_truncated_tokens, 0), full_depth_nll, exit_layers, acceptance_rate, layer_compute"
)
MODEL_COLUMNS = "model_id, model_hash, architecture, n_layers, hidden_size, dtype, device"

# Generations with the prompt set(s) they belong to: one row per (generation, set name), carrying the
# label the prompt has *in that set* (issue 14.6: one text may be harmful in one set, benign in another).
# A generation matches a member by prompt key, else by text (a caller may have keyed it differently);
# a key match wins, then the harmful label. Generations in no set appear once, with NULL set and label.
SET_GENERATIONS = """
    WITH members AS (
        SELECT s.name AS prompt_set, m.prompt_key, p.text, coalesce(m.label, p.label) AS label,
               p.category, p.tags
        FROM prompt_set_members m JOIN prompt_sets s USING (set_id) JOIN prompts p USING (prompt_key)
    ), matched AS (
        SELECT g.completion_key, mb.prompt_set, mb.label, mb.category, mb.tags, 0 AS how
        FROM generations g JOIN members mb ON mb.prompt_key = g.prompt_key
        UNION ALL
        SELECT g.completion_key, mb.prompt_set, mb.label, mb.category, mb.tags, 1 AS how
        FROM generations g JOIN members mb ON mb.text = g.prompt_text
    ), best AS (
        SELECT * FROM matched
        QUALIFY row_number() OVER (
            PARTITION BY completion_key, prompt_set ORDER BY how, (label = 'harmful') DESC, category) = 1
    )
    SELECT g.*, best.prompt_set, best.label, best.category, coalesce(best.tags, '') AS tags,
           regexp_matches(coalesce(best.tags, ''), '(^|,)\\s*hash_check\\s*(,|$)') AS copyright
    FROM generations g LEFT JOIN best USING (completion_key)
"""

# Only the given set names (one ``?``: a VARCHAR[] of names).
IN_SET_NAMES = "g.prompt_set IN (SELECT unnest(?::VARCHAR[]))"

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
