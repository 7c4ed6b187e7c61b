"""What the sidebar picked (model, prompt set, database, generation settings), read from session state."""

from __future__ import annotations

from dataclasses import dataclass, replace

import streamlit as st

from engine.lenses.files import DamagedLensError, read_lens_report
from engine.rules import DEFAULT_RULE, is_dynamic, parse_settings, rule_named
from engine.types import EXIT_DEFAULTS, GenerationParams
from pages._paths import checked_source, default_db, default_model, resolve_db

OTHER_MODEL = "__other__"  # the model picker's "type a path" choice
DEFAULT_PROMPT_SET = "demo"


@dataclass(frozen=True)
class ExitSettings:
    """The sidebar's early-exit choices: when a token leaves the network and how its state is read."""

    policy: str = str(EXIT_DEFAULTS["exit_policy"])
    thresholds: tuple[float, ...] = ()  # dynamic policies: one completion per threshold
    min_layers: int = int(EXIT_DEFAULTS["min_layers"])
    head: str = str(EXIT_DEFAULTS["exit_head"])
    problem: str | None = None  # why the typed thresholds cannot be used (shown in the sidebar)

    @property
    def dynamic(self) -> bool:
        return is_dynamic(self.policy)


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: shared by every page."""

    model: str  # a name, a hub id, or a checked absolute path
    prompt_set: str
    db: str  # resolved path, as a string (a cache key)
    params: GenerationParams  # static exit (the depth pages); the exit head is the sidebar's
    exit: ExitSettings = ExitSettings()

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

    def static_params(self, model_hash: str | None) -> GenerationParams:
        """The depth pages' settings, with the lens hash the completions are keyed by."""
        return replace(self.params, lens_hash=self.lens_hash(model_hash))

    def exit_params(self, model_hash: str | None, threshold: float) -> GenerationParams:
        """One threshold of the sidebar's dynamic exit policy (its key = the stored completions' key)."""
        return replace(
            self.params,
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
    exit_settings = exit_settings_from(state)
    return Selection(
        model=model,
        prompt_set=state.get("prompt_set", DEFAULT_PROMPT_SET),
        db=str(resolve_db(state.get("db", default_db()))),
        params=GenerationParams(
            max_new_tokens=int(state.get("max_new_tokens", GenerationParams.max_new_tokens)),
            chat_template=bool(state.get("chat_template", True)),
            system_prompt=(state.get("system_prompt") or "").strip() or None,
            exit_head=exit_settings.head,
        ),
        exit=exit_settings,
    )


def exit_settings_from(state) -> ExitSettings:
    """The early-exit inputs of the sidebar; a threshold the engine would refuse comes back as ``problem``
    (with the static policy in its place, so pages keep working)."""
    rule = rule_named(state.get("exit_policy") or DEFAULT_RULE.name)
    head = state.get("exit_head", "raw")
    if not rule.dynamic:
        return ExitSettings(head=head)
    policy = rule.name
    min_layers = int(state.get("exit_min_layers", 1))
    try:  # the rule's range, as the CLI checks it
        thresholds = tuple(sorted(parse_settings(rule, state.get("exit_thresholds", "0.9"))))
        for threshold in thresholds:  # the engine's own checks, torch-free
            GenerationParams(exit_policy=policy, threshold=threshold, min_layers=min_layers, exit_head=head)
    except ValueError as exc:
        return ExitSettings(head=head, problem=str(exc))
    return ExitSettings(policy, thresholds, min_layers, head)
