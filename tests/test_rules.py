"""Exit rules (engine.rules): one module knows each rule; CLI, sidebar and engine take their ranges and
words from it."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from engine.rules import CONFIDENCE, RULE_NAMES, RULES, SATURATION, STATIC, parse_settings, rule_named

ROOT = Path(__file__).resolve().parent.parent
RULES_MODULE = ROOT / "engine" / "rules.py"


def _rule_literals_compared(tree: ast.AST) -> list[int]:
    """Lines where a rule name appears as a string literal in a comparison or as a dict key."""

    def names_in(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in RULE_NAMES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_in(item) for item in node.elts)
        return False

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(names_in(n) for n in [node.left, *node.comparators]):
            lines.append(node.lineno)
        if isinstance(node, ast.Dict) and any(k is not None and names_in(k) for k in node.keys):
            lines.append(node.lineno)
        is_isin = isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "isin"
        if is_isin and any(names_in(a) for a in node.args):
            lines.append(node.lineno)
    return lines


def test_no_module_but_the_rules_compares_a_rule_name_to_a_literal():
    offenders = []
    for folder in ("engine", "pages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == RULES_MODULE:
                continue
            for line in _rule_literals_compared(ast.parse(path.read_text(encoding="utf-8"))):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, f"ask engine.rules instead of comparing rule names: {offenders}"


def test_the_guard_sees_a_comparison_and_a_label_table():
    """The scan above must be able to fail."""
    source = 'if policy == "confidence": pass\nLABELS = {"static": "x"}\nok = policy in ("saturation",)'
    assert _rule_literals_compared(ast.parse(source)) == [1, 2, 3]


def test_every_rule_knows_its_words_range_and_style():
    assert RULE_NAMES == ("static", "confidence", "saturation", "speculative")  # in cache keys: never renamed
    for rule in RULES.values():
        assert rule.label and rule.menu_label and rule.help and rule.symbol and rule.dash
        assert rule_named(rule.name) is rule
    assert {r.symbol for r in RULES.values()} == {"circle", "diamond", "square", "star"}
    assert rule_named(None) is STATIC and rule_named("") is STATIC  # rows stored before early exit


def test_unknown_rule_is_one_sentence():
    with pytest.raises(ValueError, match="exit policy 'fancy' is unknown: use one of static, confidence"):
        rule_named("fancy")


@pytest.mark.parametrize(
    "rule, text, expected",
    [
        (CONFIDENCE, "0.9, 0.5,0.9", (0.9, 0.5)),
        (SATURATION, "-1, 1", (-1.0, 1.0)),
    ],
)
def test_settings_parse_in_order_without_repeats(rule, text, expected):
    assert parse_settings(rule, text) == expected


@pytest.mark.parametrize(
    "rule, text, message",
    [
        (CONFIDENCE, "1.5", "threshold 1.5 is outside 0..1, the range of the confidence rule"),
        (SATURATION, "-1.2", "threshold -1.2 is outside -1..1, the range of the saturation rule"),
        (CONFIDENCE, "0.5, lots", "threshold 'lots' is not a number"),
        (CONFIDENCE, " , ", "give at least one threshold"),
        (CONFIDENCE, "nan", "is not a number"),
    ],
)
def test_bad_settings_say_why(rule, text, message):
    with pytest.raises(ValueError, match=message):
        parse_settings(rule, text)


def test_depth_and_exit_layers_of_each_rule():
    assert STATIC.exit_is_fixed and not STATIC.dynamic
    assert STATIC.deepest(4, 6) == 4 and STATIC.layers_kept(4, 6) == (0, 1, 2, 3)
    for rule in (CONFIDENCE, SATURATION):
        assert rule.dynamic and rule.deepest(0.5, 6) == 6 and rule.layers_kept(0.5, 6) == tuple(range(6))


def test_describe_in_words():
    assert STATIC.describe(None, layers=24, n_layers=30, min_layers=None) == (
        "static truncation at 24 of 30 layers"
    )
    assert CONFIDENCE.describe(0.9, layers=30, n_layers=30, min_layers=4) == (
        "confidence exit ≥ 0.9, from layer 4"
    )
    assert SATURATION.short(0.95, layers=30) == "satu 0.95"


def test_scores_match_independent_computations():
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    probs = [[math.exp(v) for v in row] for row in logits.tolist()]
    probs = [[p / sum(row) for p in row] for row in probs]
    margins = [sorted(row)[-1] - sorted(row)[-2] for row in probs]
    assert CONFIDENCE.score(None, None, logits).tolist() == pytest.approx(margins)
    before = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    after = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert SATURATION.score(before, after, None).tolist() == pytest.approx([0.0, 1.0])
