"""What the pages and the CLI ask the engine to do, each in one call (they never orchestrate engine
steps themselves).

- ``answer_prompt``: the explorer's button: store the model (and the prompt's set), generate the missing
  settings of the chosen exit rule (depths or thresholds) for one prompt, judge them with the keyword
  judge.
- ``run_probe``: activations, probes and the alignment lag for a prompt set, saved to the store;
  ``save_probe`` is its saving half (the CLI's Ray path fits the probes elsewhere).
- ``train_tuned_lens``: ``lens train``: the model's answers to a prompt set, then the lens trained on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.judges.names import KEYWORD
from engine.models import LoadedModel
from engine.rules import rule_named
from engine.types import GenerationParams, Prompt

if TYPE_CHECKING:
    from engine.lenses.training import TrainedLens


def answer_prompt(
    store,
    loaded: LoadedModel,
    prompt: Prompt,
    settings: Sequence[float],
    params: GenerationParams,
    *,
    prompt_set: str | None = None,
    set_prompts: Sequence[Prompt] | None = None,
    judges: Sequence[str] = (KEYWORD,),
) -> int:
    """Generate and judge ``prompt`` at every setting of ``params``'s rule (depths for static, thresholds
    for a dynamic rule) not stored yet; returns how many completions were new. Depths beyond the model
    are skipped. ``set_prompts`` (with ``prompt_set``) stores the set the prompt comes from."""
    from engine.generation import exit_variants
    from engine.judges import get_judge
    from engine.sweep import generate_missing, judge_stored

    store.save_model(loaded.info)
    if prompt_set and set_prompts is not None:
        store.save_prompt_set(prompt_set, list(set_prompts), source=prompt_set)
    rule = rule_named(params.exit_policy)
    if rule.dynamic:
        thresholds = [float(t) for t in settings]
        new, _ = generate_missing(store, loaded, [prompt], [], params, thresholds=thresholds)
        layers = [loaded.n_layers]
        hashes = [v.key() for v in exit_variants(loaded, params, thresholds)]
    else:
        layers = [int(k) for k in settings if int(k) <= loaded.n_layers]
        new, _ = generate_missing(store, loaded, [prompt], layers, params)
        hashes = [v.key() for v in exit_variants(loaded, params)]
    judge_stored(
        store, [get_judge(name) for name in judges], [prompt], loaded.info.model_hash, layers, hashes
    )
    return new


def save_probe(
    store,
    loaded,
    prompts: Sequence[Prompt],
    set_name: str,
    analysis,
    cache_dir: Path | str,
    direction_file: Path | None = None,
) -> int:
    """Save a probe analysis: its directions to ``cache_dir`` (unless already in ``direction_file``), its
    rows (with the model and the set) to the store; returns the rows written. ``loaded`` is a model or a
    Ray handle (only ``.info`` is read)."""
    from engine.probes import probe_records, save_directions

    records = probe_records(analysis, direction_file or save_directions(analysis, cache_dir))
    store.save_model(loaded.info)
    store.save_prompt_set(set_name, list(prompts), source=set_name, set_id=records[0].set_id)
    return store.save_probe_results(records, replace=True)


def run_probe(
    store,
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    set_name: str,
    params: GenerationParams,
    *,
    cache_dir: Path | str,
    **settings,
):
    """Activations → probes, directions and the alignment lag (``engine.probes.analyse``), saved; returns
    the analysis. ``settings``: folds, seed."""
    from engine.probes import analyse
    from engine.probes.cv import require_both_classes

    require_both_classes([p.label == "harmful" for p in prompts])  # before the activations cost anything
    analysis = analyse(loaded, prompts, params, cache_dir=cache_dir, **settings)
    save_probe(store, loaded, prompts, set_name, analysis, cache_dir)
    return analysis


def train_tuned_lens(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    generate_tokens: int | None = None,
    heldout_fraction: float | None = None,
    seed: int = 0,
    corpus: str = "benign",
    on_progress: Callable[[str, int, int, float | None], None] | None = None,
    **training: float,
) -> TrainedLens:
    """``lens train``: split ``texts`` into training and held-out texts, add the model's own answers
    (``generate_tokens`` each) and train a tuned lens on them (``engine.lenses.training.train_lens``,
    which takes ``training``'s options; ``corpus`` names the texts in its report).
    ``on_progress(stage, done, total, loss)`` sees the stages "generate", "train" and "evaluate".
    Returns the ``TrainedLens`` (not saved)."""
    from engine.generation import prompts_with_answers
    from engine.lenses.training import DEFAULT_GENERATE_TOKENS, HELDOUT_FRACTION, split_texts, train_lens

    answer_tokens = DEFAULT_GENERATE_TOKENS if generate_tokens is None else generate_tokens
    fraction = HELDOUT_FRACTION if heldout_fraction is None else heldout_fraction
    report_progress = on_progress or (lambda *_args: None)
    train_texts, heldout_texts = split_texts(list(texts), fraction, seed)
    report_progress("generate", 0, 2, None)
    train_sequences = prompts_with_answers(loaded, train_texts, answer_tokens)
    report_progress("generate", 1, 2, None)
    heldout_sequences = prompts_with_answers(loaded, heldout_texts, answer_tokens)
    report_progress("generate", 2, 2, None)
    return train_lens(
        loaded,
        train_sequences,
        heldout_sequences,
        seed=seed,
        corpus=corpus,
        generate_tokens=answer_tokens,
        on_progress=on_progress,
        **training,
    )
