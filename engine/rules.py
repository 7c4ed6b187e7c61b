"""Exit rules: when each generated token leaves the network. All knowledge of a rule lives here.

A rule has a name (stored in ``GenerationParams.exit_policy`` and so in cache keys), the range of its
setting and the sentence that refuses a setting outside it, a score (dynamic rules), a label in words
and a chart style. The CLI, the sidebar, the sweep spec, the report and the charts ask this module;
no other module compares a rule name to a string literal (``tests/test_rules.py`` checks it).

A row of a batch is (prompt, rule setting): the setting of ``static`` is the depth k, that of a dynamic
rule its threshold. Layer counts are 1-based: "layer k" is the residual stream after k decoder layers,
so exiting at k reads the same state as static truncation at ``layers = k``. Rules (Schuster et al.
2022, "Confident Adaptive Language Modeling", CALM):

- ``static``: every token exits at k (truncation). No later token goes deeper than k, so the layers
  above k compute nothing at all.
- ``confidence`` (softmax response): at each k >= ``min_layers``, exit when the exit head's top-1
  minus top-2 probability >= the threshold.
- ``saturation`` (state saturation): at each k >= ``min_layers``, exit when the cosine between the
  hidden states after k-1 and after k layers >= the threshold (after 0 layers = the embeddings).

Under a dynamic rule every token not exited earlier exits at L; a threshold above the range is never
reached (full depth), the lowest one exits every token at ``min_layers``.

Adding a rule is one class here (plus its tests). A rule whose rows keep a fixed set of layers (a block
removed) or that drafts and verifies (self-speculative decoding) declares it through ``exit_is_fixed``
and ``layers_kept``; see ``engine.decoding.loop`` for what the loop reads.

Torch-free: a score imports torch only when it runs, inside the decoding loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import UserInputError


class UnknownRuleError(UserInputError):
    """An exit rule name this engine does not know; the message lists the known ones."""


@dataclass(frozen=True)
class ExitRule:
    """What every rule says about itself (the base is never used directly)."""

    name: str  # stored in params and cache keys: never rename
    label: str  # in words, for reports and charts ("confidence exit")
    menu_label: str  # the sidebar's option text
    setting_name: str  # what a row's setting is ("depth", "threshold")
    low: float  # the meaningful range of a setting (static: checked against the model's depth)
    high: float
    symbol: str  # chart marker
    dash: str = "solid"  # chart line
    # True: each row's exit layer is its setting, known before decoding (rows route by depth on the
    # host, no tensor has to be read). False: each token's exit is decided on the fly by ``score``.
    exit_is_fixed: bool = False
    # True: the exit head's logits at each layer feed ``score`` (run only on rows still climbing).
    needs_head_logits: bool = False
    # True: the first layers draft tokens and the full model verifies them (engine.decoding.speculative);
    # every token is the full model's, so a row's depth is L and its setting the draft's layer count.
    drafts: bool = False
    help: str = ""

    @property
    def dynamic(self) -> bool:
        """Each token picks its own exit layer (the run's ``layers`` is L, settings are thresholds)."""
        return not self.exit_is_fixed

    def check_setting(self, value: float) -> None:
        """Refuse a setting outside the rule's range with one sentence (raises ValueError)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise UserInputError(f"the {self.setting_name} {value!r} of the {self.name} rule is not a number")
        if not self.low <= value <= self.high:
            raise UserInputError(
                f"{self.setting_name} {value:g} is outside {self.low:g}..{self.high:g}, the range of the "
                f"{self.name} rule"
            )

    def deepest(self, setting: float, n_layers: int) -> int:
        """The deepest layer a token of a row with this setting can reach."""
        return int(setting) if self.exit_is_fixed else n_layers

    def layers_kept(self, setting: float, n_layers: int) -> tuple[int, ...]:
        """The decoder layers (0-based) a row with this setting may run, in order."""
        return tuple(range(self.deepest(setting, n_layers)))

    def score(self, before: Any, after: Any, logits: Any) -> Any:
        """Per-row score of a token after one layer (rows exit where score >= their threshold)."""
        raise NotImplementedError(f"the {self.name} rule exits at a fixed layer and has no score")

    def describe(self, setting: float | None, *, layers: int, n_layers: int, min_layers: int | None) -> str:
        """A row's rule in words: 'static truncation at 24 of 30 layers', 'confidence exit ≥ 0.9'."""
        if self.exit_is_fixed:
            return f"{self.label} at {layers} of {n_layers} layers"
        floor = f", from layer {min_layers}" if min_layers and min_layers > 1 else ""
        return f"{self.label} ≥ {setting:g}{floor}"

    def short(self, setting: float | None, *, layers: int) -> str:
        """A narrow column's text: 'static', 'conf 0.9'."""
        return self.name if self.exit_is_fixed else f"{self.name[:4]} {setting:g}"


@dataclass(frozen=True)
class StaticRule(ExitRule):
    def check_setting(self, value: float) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserInputError(f"depth {value!r} is not a whole number of layers ≥ 1")


@dataclass(frozen=True)
class ConfidenceRule(ExitRule):
    def score(self, before: Any, after: Any, logits: Any) -> Any:
        import torch

        top = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]


@dataclass(frozen=True)
class SaturationRule(ExitRule):
    def score(self, before: Any, after: Any, logits: Any) -> Any:
        import torch

        return torch.cosine_similarity(before.float(), after.float(), dim=-1).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class SpeculativeRule(ExitRule):
    """Self-speculative decoding (LayerSkip-style): greedy, so its output is the full model's."""

    def deepest(self, setting: float, n_layers: int) -> int:
        return n_layers

    def describe(self, setting: float | None, *, layers: int, n_layers: int, min_layers: int | None) -> str:
        draft = f", {int(setting)}-layer draft" if setting else ""
        return f"{self.label}{draft} (verified at {n_layers} of {n_layers} layers)"

    def short(self, setting: float | None, *, layers: int) -> str:
        return f"spec k={int(setting)}" if setting else "spec"


STATIC = StaticRule(
    name="static",
    label="static truncation",
    menu_label="static (the chosen depth)",
    setting_name="depth",
    low=1,
    high=math.inf,
    symbol="circle",
    exit_is_fixed=True,
    help="every token exits at the chosen depth (--layers/--depths)",
)
CONFIDENCE = ConfidenceRule(
    name="confidence",
    label="confidence exit",
    menu_label="confidence (CALM)",
    setting_name="threshold",
    low=0.0,
    high=1.0,
    symbol="diamond",
    needs_head_logits=True,
    help="at the first layer ≥ the minimum where the exit head's top-1 minus top-2 probability reaches "
    "the threshold (0..1)",
)
SATURATION = SaturationRule(
    name="saturation",
    label="saturation exit",
    menu_label="saturation (CALM)",
    setting_name="threshold",
    low=-1.0,
    high=1.0,
    symbol="square",
    help="where the cosine between consecutive layers' states reaches the threshold (-1..1)",
)

SPECULATIVE = SpeculativeRule(
    name="speculative",
    label="self-speculative decoding",
    menu_label="self-speculative (draft, then verify)",
    setting_name="draft layers",
    low=1,
    high=math.inf,
    symbol="star",
    exit_is_fixed=True,
    drafts=True,
    help="the first k layers (--draft-layers) draft a few tokens (--draft-tokens), the full model verifies "
    "them: the answer is the full model's (greedy), the compute is the draft's on top",
)

RULES: dict[str, ExitRule] = {rule.name: rule for rule in (STATIC, CONFIDENCE, SATURATION, SPECULATIVE)}
RULE_NAMES: tuple[str, ...] = tuple(RULES)
DEFAULT_RULE = STATIC


def rule_named(name: str | None) -> ExitRule:
    """The rule called ``name`` (None, empty or a missing cell: static, as rows stored before early exit
    are)."""
    if not isinstance(name, str) or not name:
        return DEFAULT_RULE
    try:
        return RULES[name]
    except KeyError:
        raise UnknownRuleError(
            f"exit policy {name!r} is unknown: use one of {', '.join(RULE_NAMES)}"
        ) from None


def is_static(name: str | None) -> bool:
    """True for rows whose tokens all exit at the completion's depth (the truncation curve)."""
    return rule_named(name) is STATIC


def is_dynamic(name: str | None) -> bool:
    return rule_named(name).dynamic


def parse_settings(rule: ExitRule, text: str) -> tuple[float, ...]:
    """A comma list of a dynamic rule's thresholds, each checked against the rule's range, in order
    and without repeats (raises ValueError with one sentence)."""
    values = []
    for part in str(text).replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise UserInputError(f"{rule.setting_name} {part.strip()!r} is not a number") from None
        rule.check_setting(value)
        values.append(value)
    if not values:
        raise UserInputError(f"give at least one {rule.setting_name}, e.g. 0.9 (or several: 0.5, 0.8, 0.95)")
    return tuple(dict.fromkeys(values))


def page_rules() -> dict[str, ExitRule]:
    """The rules the dashboard's settings offer: every rule (self-speculative decoding with its draft
    settings, checked as the CLI checks ``--draft-layers`` and ``--draft-tokens``)."""
    return dict(RULES)


def dynamic_rules() -> Sequence[ExitRule]:
    return [rule for rule in RULES.values() if rule.dynamic]
