"""What the sidebar picked (model, prompt set, database, generation-settings scope), read from session
state."""

from __future__ import annotations

from dataclasses import dataclass, replace

import streamlit as st

from engine.lenses.files import DamagedLensError, read_lens_report
from engine.modelfiles import peek_n_layers
from engine.rules import DEFAULT_RULE, is_dynamic, parse_settings, rule_named
from engine.scopes import SettingsScope
from engine.types import DEFAULT_DRAFT_TOKENS, EXIT_DEFAULTS, GenerationParams, check_draft_layers
from pages._paths import checked_source, default_db, default_model, resolve_db

OTHER_MODEL = "__other__"  # the model picker's "type a path" choice
DEFAULT_PROMPT_SET = "demo"
SCOPE_STATE = "settings_scope"  # the sidebar's generation-settings scope (a SettingsScope key)
NEW_SETTINGS = "__new__"  # the scope picker's "other settings" choice: the inputs below it decide


@dataclass(frozen=True)
class ExitSettings:
    """The sidebar's early-exit choices: when a token leaves the network and how its state is read."""

    policy: str = str(EXIT_DEFAULTS["exit_policy"])
    thresholds: tuple[float, ...] = ()  # dynamic policies: one completion per threshold
    min_layers: int = int(EXIT_DEFAULTS["min_layers"])
    head: str = str(EXIT_DEFAULTS["exit_head"])
    problem: str | None = None  # why the typed settings cannot be used (shown in the sidebar)
    # Self-speculative decoding: the draft's layer count and the tokens it drafts per verification.
    draft_layers: int = 0
    draft_tokens: int = 0

    @property
    def dynamic(self) -> bool:
        return is_dynamic(self.policy)

    @property
    def drafts(self) -> bool:
        return rule_named(self.policy).drafts


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: shared by every page."""

    model: str  # a name, a hub id, or a checked absolute path
    prompt_set: str
    db: str  # resolved path, as a string (a cache key)
    params: GenerationParams  # the scope's settings with static exit through the raw head (the depth pages)
    exit: ExitSettings = ExitSettings()
    scope: SettingsScope = SettingsScope()  # whose stored results pages show, and new answers use

    def lens_hash(self, model_hash: str | None) -> str:
        """The tuned lens of this model (its sidecar's hash), "" for the raw head or when none exists."""
        if self.exit.head != "tuned" or not model_hash:
            return ""
        try:
            report = read_lens_report(model_hash)
        except DamagedLensError:  # shown where the lens is used (generating refuses it with the reason)
            return ""
        return str(report.get("lens_hash", "")) if report else ""

    def lens_problem(self, model_hash: str | None) -> str | None:
        """Why the chosen tuned lens cannot be used (a damaged file), None when fine or not chosen."""
        if self.exit.head != "tuned" or not model_hash:
            return None
        try:
            read_lens_report(model_hash, model_name=self.model)
        except DamagedLensError as exc:
            return str(exc)
        return None

    def static_params(self, model_hash: str | None = None) -> GenerationParams:
        """The depth pages' settings: static truncation read through the model's own final norm and head
        (the exit head applies to the dynamic exit policies), so choosing the tuned head keeps them."""
        return self.params

    def speculative_params(self) -> GenerationParams:
        """The sidebar's self-speculative decoding in the chosen scope (its key = the stored answers' key)."""
        return replace(
            self.params,
            exit_policy=self.exit.policy,
            draft_layers=self.exit.draft_layers,
            draft_tokens=self.exit.draft_tokens,
        )

    def exit_params(self, model_hash: str | None, threshold: float) -> GenerationParams:
        """One threshold of the sidebar's dynamic exit policy (its key = the stored completions' key)."""
        return replace(
            self.params,
            exit_head=self.exit.head,
            exit_policy=self.exit.policy,
            threshold=float(threshold),
            min_layers=self.exit.min_layers,
            lens_hash=self.lens_hash(model_hash),
        )


def selection() -> Selection:
    """The current sidebar choices (the sidebar is drawn before the page)."""
    state = st.session_state
    model = state.get("model_choice", default_model())
    if model == OTHER_MODEL:
        # the resolved absolute path that was checked, not the typed text (which the loader would
        # resolve against the server's working folder)
        source, _problem = checked_source(state.get("model_path") or "", "model path")
        model = source or default_model()
    scope = scope_from(state)
    return Selection(
        model=model,
        prompt_set=state.get("prompt_set", DEFAULT_PROMPT_SET),
        db=str(resolve_db(state.get("db", default_db()))),
        params=scope.params(),
        exit=exit_settings_from(state, model),
        scope=scope,
    )


def scope_from(state) -> SettingsScope:
    """The chosen stored scope, or (nothing stored, or "other settings") the settings inputs'."""
    chosen = state.get(SCOPE_STATE)
    stored = SettingsScope.from_key(chosen) if isinstance(chosen, str) and chosen != NEW_SETTINGS else None
    if stored is not None:
        return stored
    return SettingsScope(
        max_new_tokens=int(state.get("max_new_tokens", GenerationParams.max_new_tokens)),
        chat_template=bool(state.get("chat_template", True)),
        system_prompt=(state.get("system_prompt") or "").strip() or None,
    )


def default_draft_layers(model: str) -> int:
    """A draft of half the model's layers (1 when the layer count is unknown)."""
    n_layers = peek_n_layers(model) if model else None
    return max(1, n_layers // 2) if n_layers else 1


def speculative_settings_from(state, model: str) -> ExitSettings:
    """Self-speculative decoding's draft settings, checked as the CLI checks them (GenerationParams), and
    the draft against the model's layers when they are known; a refused one comes back as ``problem``."""
    rule = rule_named(state.get("exit_policy"))
    draft_layers = state.get("exit_draft_layers", default_draft_layers(model))
    draft_tokens = state.get("exit_draft_tokens", DEFAULT_DRAFT_TOKENS)
    try:
        params = GenerationParams(exit_policy=rule.name, draft_layers=draft_layers, draft_tokens=draft_tokens)
        n_layers = peek_n_layers(model) if model else None
        if n_layers is not None:
            check_draft_layers(params, n_layers)
    except ValueError as exc:
        return ExitSettings(problem=str(exc))
    return ExitSettings(rule.name, draft_layers=int(draft_layers), draft_tokens=int(draft_tokens))


def exit_settings_from(state, model: str = "") -> ExitSettings:
    """The early-exit inputs of the sidebar; a setting the engine would refuse comes back as ``problem``
    (with the static policy in its place, so pages keep working)."""
    rule = rule_named(state.get("exit_policy") or DEFAULT_RULE.name)
    head = state.get("exit_head", "raw")
    if rule.drafts:
        return speculative_settings_from(state, model)
    if not rule.dynamic:
        return ExitSettings()  # the exit head applies to the dynamic rules only
    policy = rule.name
    min_layers = int(state.get("exit_min_layers", 1))
    try:  # the rule's range, as the CLI checks it
        thresholds = tuple(sorted(parse_settings(rule, state.get("exit_thresholds", "0.9"))))
        for threshold in thresholds:  # the engine's own checks, torch-free
            GenerationParams(exit_policy=policy, threshold=threshold, min_layers=min_layers, exit_head=head)
    except ValueError as exc:
        return ExitSettings(head=head, problem=str(exc))
    return ExitSettings(policy, thresholds, min_layers, head)
