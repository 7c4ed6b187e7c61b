"""SQL fragments and column lists shared by the reading and writing modules.

Only identifiers from these constants and fixed ``WHERE`` fragments are ever spliced into SQL;
values always travel as bound parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPT_COLUMNS = ("prompt_key", "prompt_id", "text", "label", "category", "context", "source", "tags")
MEMBER_COLUMNS = ("set_id", "prompt_key", "position", "prompt_id", "label", "category", "tags")

# A prompt set version's content hash over its member rows (an aggregate: one ``GROUP BY set_id``).
# ``writes.members_content_hash`` computes the same in Python; the store's tests hold them equal.
MEMBERS_CONTENT_HASH = (
    "substr(md5(string_agg(concat_ws(chr(31), prompt_key, prompt_id, coalesce(label, ''), "
    "coalesce(category, ''), coalesce(tags, '')), chr(30) ORDER BY prompt_key)), 1, 16)"
)
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

# The versions of every prompt set: a version is a (name, content hash); numbered 1, 2, ... in the order
# they first appeared; the one saved last is the set's current version and is shown by the set's name,
# the others as ``name@vN``. One row per stored set id (several ids may hold one version).
SET_VERSIONS = """
    WITH versions AS (
        SELECT name, content_hash, min(added_at) AS first_added,
               max(coalesce(saved_at, added_at)) AS last_saved, max(n_prompts) AS n_prompts
        FROM prompt_sets GROUP BY name, content_hash
    ), numbered AS (
        SELECT *,
               row_number() OVER (PARTITION BY name ORDER BY first_added, content_hash) AS version,
               row_number() OVER (
                   PARTITION BY name ORDER BY last_saved DESC, first_added DESC, content_hash) = 1
                   AS is_current,
               count(*) OVER (PARTITION BY name) AS n_versions
        FROM versions
    )
    SELECT s.set_id, n.name, n.content_hash, n.version, n.n_versions, n.is_current, n.n_prompts,
           n.first_added, n.last_saved,
           CASE WHEN n.is_current THEN n.name ELSE n.name || '@v' || n.version END AS shown_name
    FROM prompt_sets s JOIN numbered n
      ON n.name = s.name AND n.content_hash IS NOT DISTINCT FROM s.content_hash
"""

# Generations with the prompt set(s) they belong to: one row per (generation, set version), carrying the
# label the prompt has *in that version* (one text may be harmful in one set, benign in another, or
# relabelled in a later version of a file). ``prompt_set`` is the version's shown name (``demo`` for the
# current version, ``demo@v1`` for an earlier one); ``set_current`` says which is current.
# A generation matches a member by prompt key, else by text (a caller may have keyed it differently);
# a key match wins, then the harmful label. Generations in no set appear once, with NULL set and label.
SET_GENERATIONS = f"""
    WITH set_versions AS ({SET_VERSIONS}),
    members AS (
        SELECT sv.shown_name AS prompt_set, sv.is_current AS set_current, m.prompt_key, p.text,
               coalesce(m.label, p.label) AS label, coalesce(m.category, p.category) AS category,
               coalesce(m.tags, p.tags) AS tags
        FROM prompt_set_members m JOIN set_versions sv USING (set_id) JOIN prompts p USING (prompt_key)
    ), matched AS (
        SELECT g.completion_key, mb.prompt_set, mb.set_current, mb.label, mb.category, mb.tags, 0 AS how
        FROM generations g JOIN members mb ON mb.prompt_key = g.prompt_key
        UNION ALL
        SELECT g.completion_key, mb.prompt_set, mb.set_current, mb.label, mb.category, mb.tags, 1 AS how
        FROM generations g JOIN members mb ON mb.text = g.prompt_text
    ), best AS (
        SELECT * FROM matched
        QUALIFY row_number() OVER (
            PARTITION BY completion_key, prompt_set ORDER BY how, (label = 'harmful') DESC, category) = 1
    )
    SELECT g.*, best.prompt_set, best.label, best.category, coalesce(best.tags, '') AS tags,
           regexp_matches(coalesce(best.tags, ''), '(^|,)\\s*hash_check\\s*(,|$)') AS copyright,
           coalesce(best.set_current, true) AS set_current
    FROM generations g LEFT JOIN best USING (completion_key)
"""

# Only the given set versions by shown name (one ``?``: a VARCHAR[] of names).
IN_SET_NAMES = "g.prompt_set IN (SELECT unnest(?::VARCHAR[]))"
# No set named: every set's current version (and generations in no set); earlier ones only when named.
CURRENT_SETS = "g.set_current"

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
