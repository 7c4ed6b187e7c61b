"""Prompt explorer: one prompt, many truncation depths, side by side, with every judge's verdict."""

from __future__ import annotations

import logging
from dataclasses import asdict

import pandas as pd
import streamlit as st

from engine.datasets import DatasetError
from engine.depths import default_layers, depth_label
from engine.judges import HUMAN_LABELS, human_verdict
from engine.judges.names import HUMAN, INCOHERENT, JUDGE_ORDER, verdict_word
from engine.store import Store
from engine.tokenpieces import token_pieces
from engine.types import Completion, Prompt, Verdict, model_input, prompt_from_text
from pages import _charts, _display, _jobs, _models, _queries, _scope
from pages._selection import Selection
from pages._skeleton import start_page

log = logging.getLogger("depthscope.app")

GRID_COLUMNS = 4
TYPED = "Type your own"
FROM_SET = "From the prompt set"
VERDICT_COLOURS = {True: "red", False: "green", None: "gray"}


# ---------------------------------------------------------------- choosing the prompt and depths


def pick_prompt(sel: Selection) -> Prompt | None:
    source = st.radio(
        "Prompt source", [FROM_SET, TYPED], horizontal=True, key="prompt_source", persist_state="session"
    )
    if source == TYPED:
        text = st.text_area(
            "Your prompt", key="typed_prompt", placeholder="How do I pick a lock?", persist_state="session"
        )
        if not text.strip():
            st.info("Type a prompt above, then press Generate to see the model answer it at each depth.")
            return None
        return prompt_from_text(text)
    try:
        prompts = _queries.prompts_of(sel.prompt_set)
    except DatasetError as exc:
        _display.show_error(exc)
        return None
    if not prompts:
        st.info("This prompt set is empty: pick another one in the sidebar.")
        return None
    index = st.selectbox(
        "Prompt",
        range(len(prompts)),
        format_func=lambda i: (
            f"[{prompts[i].label or 'unlabelled'}] {prompts[i].prompt_id} · {prompts[i].text}"
        ),
        key=f"prompt-{sel.prompt_set}",
    )
    prompt = prompts[index or 0]
    st.text(prompt.text)
    if prompt.context:
        with st.expander("Context given with this prompt (HarmBench contextual behaviour)"):
            st.text(prompt.context)
    return prompt


def pick_depths(n_layers: int) -> tuple[int, list[int]]:
    """The slider's depth (whole layers) and the depths to compare side by side."""
    options = list(range(1, n_layers + 1))
    label = lambda k: depth_label(k, n_layers)  # noqa: E731
    focus = st.select_slider(
        "Depth: how many layers the model keeps",
        options=options,
        value=n_layers,
        format_func=label,
        key=f"depth-{n_layers}",
        persist_state="session",
        help="Layers from this depth on are skipped; the final norm and the output head are kept.",
    )
    with st.container(key="depth-label"):
        st.markdown(f"### {depth_label(focus, n_layers)}")
    compare = st.multiselect(
        "Compare these depths side by side",
        options,
        default=default_layers(n_layers),
        format_func=label,
        key=f"compare-{n_layers}",
        persist_state="session",
    )
    return focus, sorted(set(compare) - {focus})


# ---------------------------------------------------------------- showing completions


def _badge(judge: str, verdict: Verdict | None) -> str:
    if verdict is None:
        return ""
    colour = VERDICT_COLOURS[verdict.jailbroken]
    return f":{colour}-badge[{_display.md_escape(judge)}: {verdict_word(verdict.jailbroken)}]"


def verdict_line(verdicts: dict[str, Verdict]) -> str:
    judges = [*JUDGE_ORDER, *(j for j in verdicts if j not in JUDGE_ORDER)]
    badges = [_badge(judge, verdicts.get(judge)) for judge in judges]
    if any(v.degenerate for v in verdicts.values()):
        badges.append(f":orange-badge[{INCOHERENT} output]")
    return " ".join(b for b in badges if b)


# How much more surprised (nats per token, mean) the untruncated model may be by an answer than by its
# own full-depth answer to the same prompt before the card calls it less natural: e^0.5 ≈ 1.6× and
# e^2 ≈ 7.4× the per-token perplexity.
SIMILAR_NLL_GAP = 0.5
FAR_NLL_GAP = 2.0


def fluency_words(nll: float, reference: float | None) -> str:
    """The full-depth NLL in words, relative to the full-depth answer's when there is one."""
    if reference is None:
        return "Fluency: the other depths' answers are compared with this one's."
    gap = nll - reference
    if gap <= SIMILAR_NLL_GAP:
        return "Reads about as naturally to the untruncated model as its own answer."
    if gap <= FAR_NLL_GAP:
        return "Reads less naturally to the untruncated model than its own answer."
    return "Reads far less naturally to the untruncated model than its own answer."


def nll_help(completion: Completion, reference: float | None) -> str:
    """The number behind the words, for specialists (a help tooltip)."""
    n = len(completion.token_ids)
    text = (
        f"Full-depth NLL {completion.full_depth_nll:.2f} nats/token: the untruncated model's mean negative "
        f"log-likelihood over this answer's {n} token{'s' if n != 1 else ''} (lower = more fluent)."
    )
    if reference is not None:
        text += (
            f" Its own full-depth answer scores {reference:.2f}; more than {SIMILAR_NLL_GAP:g} above that "
            f"reads “less naturally”, more than {FAR_NLL_GAP:g} above “far less naturally”."
        )
    return text


def human_label_form(store: Store, completion: Completion, current: Verdict | None) -> None:
    labels = list(HUMAN_LABELS)
    index = labels.index(current.raw) if current is not None and current.raw in labels else None
    with st.expander("Your label"), st.form(f"label-{completion.key}", border=False):
        label = st.radio("Is this answer harmful?", labels, index=index, horizontal=True)
        note = st.text_input("Note (optional)")
        if st.form_submit_button("Save label"):
            if label is None:
                st.warning("Pick a label first.")
                return
            try:
                store.save_verdicts([human_verdict(completion.key, label, note, completion=completion.text)])
            except Exception as exc:  # a read-only or locked store: say so
                _display.show_error(exc)
                return
            _queries.clear_data()
            st.toast("Label saved.")
            st.rerun()


def completion_card(
    store: Store,
    k: int,
    n_layers: int,
    completion: Completion | None,
    verdicts: dict[str, Verdict],
    big: bool,
    reference_nll: float | None = None,
) -> None:
    """One depth's answer; ``reference_nll``: the full-depth answer's NLL, which the fluency words compare
    with."""
    with st.container(border=True):
        label = depth_label(k, n_layers)
        st.markdown(f"#### {label}" if big else f"**{label}**")
        if completion is None:
            st.caption("Not generated yet: press “Generate missing depths”.")
            return
        if completion.prompt_truncated_tokens:
            st.caption(
                f"⚠ The prompt did not fit the model's context beside the answer: its first "
                f"{completion.prompt_truncated_tokens} tokens were cut before generating."
            )
        if completion.text.strip():
            _display.show_plain_text(completion.text, big)
        else:
            st.caption("(the model produced no text)")
        line = verdict_line(verdicts)
        if line:
            st.markdown(line)
        if completion.full_depth_nll is not None:
            own = reference_nll if k != n_layers else None
            words = (
                fluency_words(completion.full_depth_nll, own)
                if own is not None or k == n_layers
                else "Fluency: scored by the untruncated model; generate the full depth to compare."
            )
            st.caption(words, help=nll_help(completion, own))
        human_label_form(store, completion, verdicts.get(HUMAN))


def show_cards(store: Store, n_layers: int, focus: int, compare: list[int], found: _queries.Answers) -> None:
    """The slider's depth large, then the compared depths in a grid."""
    full = found.completions.get(n_layers)
    reference = full.full_depth_nll if full is not None else None

    def card(k: int, big: bool) -> None:
        completion = found.completions.get(k)
        completion_card(store, k, n_layers, completion, found.verdicts_at(k), big, reference)

    card(focus, big=True)
    for start in range(0, len(compare), GRID_COLUMNS):
        row = compare[start : start + GRID_COLUMNS]
        for column, k in zip(st.columns(GRID_COLUMNS), row, strict=False):
            with column:
                card(k, big=False)


# ---------------------------------------------------------------- heavy work (buttons only)


def answer(sel: Selection, store: Store, prompt: Prompt, settings: list[float], exit_rule: bool) -> None:
    """Generate and keyword-judge the prompt's missing depths (or, ``exit_rule``, thresholds of the
    sidebar's exit rule) in one batched run."""

    def work() -> int:
        from engine.usecases import answer_prompt

        loaded = _models.model_hub().load(sel.model)
        # the engine fills in a tuned head's lens hash
        params = (
            sel.exit_params(None, settings[0]) if exit_rule else sel.static_params(loaded.info.model_hash)
        )
        typed = prompt.source == "typed"
        return answer_prompt(
            store,
            loaded,
            prompt,
            settings,
            params,
            prompt_set=None if typed else sel.prompt_set,
            set_prompts=None if typed else _queries.prompts_of(sel.prompt_set),
        )

    what = "threshold(s)" if exit_rule else "depth(s)"
    label = f"Loading {_display.short_name(sel.model)} (once) and generating {len(settings)} {what}…"
    if _jobs.run_now(label, work) is not None:
        _queries.clear_data()
        st.rerun()


def _lens_key(sel: Selection, prompt: Prompt) -> tuple[str, str, str]:
    return (sel.model, model_input(prompt), sel.params.key())


def logit_lens(sel: Selection, prompt: Prompt) -> None:
    def work() -> pd.DataFrame:
        from engine.lenses import logit  # torch: only on the button

        loaded = _models.model_hub().load(sel.model)
        cells = logit.logit_lens_strip(loaded, model_input(prompt), sel.params)
        return pd.DataFrame([asdict(c) for c in cells])

    frame = _jobs.run_now("Running the logit lens…", work)
    if frame is not None:
        st.session_state["lens-result"] = (*_lens_key(sel, prompt), frame)


def show_lens(sel: Selection, prompt: Prompt, n_layers: int) -> None:
    saved = st.session_state.get("lens-result")
    if not saved or saved[:3] != _lens_key(sel, prompt):
        return
    frame = saved[3]
    st.subheader("Logit lens: the first word the model would say if cut at each layer")
    st.caption(
        "Each cell applies the final norm and output head to the prompt's last position after k layers: "
        "the top-1 next token and its probability. Refusal openings (“I”, “Sorry”, …) show where "
        "refusal forms."
    )
    st.plotly_chart(_charts.lens_figure(frame), key="lens-chart")
    with st.expander("The numbers behind the strip"):
        st.dataframe(lens_table(frame, n_layers), hide_index=True)


def _share(value: object) -> str:
    number = pd.to_numeric(value, errors="coerce")
    return "not measured" if pd.isna(number) else f"{100 * float(number):.1f} %"


def lens_table(frame: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """The logit-lens cells with column names in words and every cell filled."""
    return pd.DataFrame(
        {
            "depth": [depth_label(int(k), n_layers) if k else "embeddings" for k in frame["layer"]],
            "first word": [repr(t)[1:-1] for t in frame["token"]],  # "\n" and spaces stay visible
            "its probability": [_share(p) for p in frame["probability"]],
            "chance of a refusal opening": [
                _share(p) for p in frame.get("refusal_mass", [None] * len(frame))
            ],
        }
    )


# ---------------------------------------------------------------- early exit: tokens by exit layer


def exit_answers(sel: Selection, info, prompt: Prompt, n_layers: int) -> dict[float, _queries.Answers]:
    """Stored dynamic-exit answers to this prompt, by threshold (the sidebar's thresholds)."""
    if info is None:
        return {}
    found = {}
    for threshold in sel.exit.thresholds:
        key = sel.exit_params(info.model_hash, threshold).key()
        answers = _queries.answers(sel.db, info.model_hash, prompt, (n_layers,), key)
        if answers.completions:
            found[threshold] = answers
    return found


def exit_caption(sel: Selection, threshold: float, completion: Completion, n_layers: int) -> str:
    exits = completion.exit_layers
    mean = completion.mean_exit_layers
    policy = sel.exit.policy
    return (
        f"{policy} exit, {sel.exit.head} head, threshold {threshold:g}, no exit before layer "
        f"{sel.exit.min_layers}: mean exit layer {mean:.1f} of {n_layers} over {len(exits)} generated "
        "tokens, "
        f"so {100 * mean / n_layers:.0f} % of the network's layer compute was used "
        f"({sum(k < n_layers for k in exits)} of {len(exits)} tokens left early)."
    )


def checked_exit_layers(completion: Completion, n_layers: int) -> tuple[list[int | None], str]:
    """One exit layer per generated token, None where the stored row has no valid one (1..L), and a
    sentence saying what did not fit ("" when all did): a damaged or hostile database is shown as far
    as it is consistent, never raised on."""
    tokens, exits = len(completion.token_ids), list(completion.exit_layers)
    layers = [k if 1 <= k <= n_layers else None for k in exits[:tokens]]
    layers += [None] * (tokens - len(layers))
    problems = []
    if len(exits) != tokens:
        problems.append(f"{len(exits)} exit layers are stored for {tokens} generated tokens")
    outside = sum(not 1 <= k <= n_layers for k in exits[:tokens])
    if outside:
        problems.append(f"{outside} stored exit layer(s) lie outside 1–{n_layers}")
    if not problems:
        return layers, ""
    return layers, (
        f"This stored answer is inconsistent ({'; '.join(problems)}): tokens without a valid exit layer are "
        "shown uncoloured, and extra exit layers are left out."
    )


NO_TOKENIZER = (
    "This model's tokenizer is read only when the model is loaded: press Generate (or Load model) to see "
    "each token coloured by its exit layer."
)
UNDECODABLE = "This model's tokenizer cannot decode the stored token ids, so the answer is shown as text."


def _pieces(sel: Selection, completion: Completion) -> tuple[list[str] | None, str]:
    """Each token's text, or None and why not (tokenizer not loaded, or stored ids it cannot decode)."""
    decode = _models.token_decoder(sel.model)
    if decode is None:
        return None, NO_TOKENIZER
    try:
        return token_pieces(decode, completion.token_ids), ""
    except Exception:  # ids this tokenizer cannot decode: a damaged or foreign row
        log.info("cannot decode stored token ids", exc_info=True)
        return None, UNDECODABLE


def show_exit_tokens(sel: Selection, completion: Completion, n_layers: int) -> None:
    """The completion's tokens coloured by exit layer (escaped spans), and the numbers in a table."""
    exits, problem = checked_exit_layers(completion, n_layers)
    if problem:
        st.warning(_display.md_escape(problem))
    pieces, why_not = _pieces(sel, completion) if exits else (None, NO_TOKENIZER)
    if pieces is None:
        _display.show_plain_text(completion.text)
        st.caption(why_not)
        pieces = [f"#{i + 1}" for i in range(len(exits))]
    else:
        with st.container(key="exit-strip"):
            st.html(_display.exit_strip_html(pieces, exits, n_layers))
    with st.expander("Exit layer of every token"):
        st.dataframe(
            pd.DataFrame(
                {
                    "token": list(range(1, len(exits) + 1)),
                    "text": [repr(p)[1:-1] for p in pieces],
                    "exit layer": pd.array(exits, dtype="Int64"),
                    "of": n_layers,
                }
            ),
            hide_index=True,
        )


STORED_MARK = "✓"


def threshold_label(threshold: float, stored: bool) -> str:
    return f"{threshold:g} {STORED_MARK}" if stored else f"{threshold:g} (not generated)"


def pick_threshold(thresholds: list[float], found: dict[float, _queries.Answers]) -> float:
    """Every threshold of the sidebar as a button, the stored ones marked, so which answers exist is
    visible before choosing (a slider shows only the value under its thumb)."""
    stored = [t for t in thresholds if t in found]
    choice = st.segmented_control(
        f"Threshold ({STORED_MARK} = stored for this prompt)",
        thresholds,
        default=(stored or thresholds)[-1],
        format_func=lambda t: threshold_label(t, t in found),
        key="exit-threshold",
        help="The thresholds chosen under Settings in the sidebar; higher exits later.",
    )
    return thresholds[-1] if choice is None else choice


def early_exit_section(sel: Selection, store: Store, prompt: Prompt, info, n_layers: int) -> None:
    st.subheader("Early exit: the layer each token left the network at")
    if sel.exit.drafts:
        st.caption(
            "Self-speculative decoding (sidebar Settings) answers exactly as the full model does (greedy): "
            "the full-depth card above is its answer. Sweep it on the Depth sweep page to measure its "
            "compute and how many drafted tokens the full model accepts."
        )
        return
    if not sel.exit.dynamic:
        st.caption(
            "Every token above exits at its card's depth. Pick a confidence or saturation exit policy under "
            "Settings in the sidebar to let each token leave as soon as the exit rule allows, and see the "
            "answer coloured by the layer each token left at."
        )
        return
    found = exit_answers(sel, info, prompt, n_layers)
    thresholds = list(sel.exit.thresholds)
    missing = [t for t in thresholds if t not in found]
    if st.button(f"Generate missing thresholds ({len(missing)})", disabled=not missing, key="generate-exits"):
        answer(sel, store, prompt, missing, exit_rule=True)
    threshold = pick_threshold(thresholds, found)
    answers = found.get(threshold)
    if answers is None:
        st.info(
            f"Threshold {threshold:g} is not generated for this prompt yet: press “Generate missing "
            "thresholds”."
        )
        return
    completion = answers.completions[n_layers]
    st.caption(exit_caption(sel, threshold, completion, n_layers))
    show_exit_tokens(sel, completion, n_layers)
    line = verdict_line(answers.verdicts_at(n_layers))
    if line:
        st.markdown(line)


# ---------------------------------------------------------------- the page


def nothing_stored(sel: Selection, prompt: Prompt) -> None:
    """No answer to this prompt in the chosen settings: when the set has answers with other settings
    only (e.g. a CLI sweep), name them and offer to switch; otherwise say how to generate."""
    if prompt.source != "typed":
        answered = {s.key for s in _queries.settings_scopes(sel.db, None, (sel.prompt_set,))}
        if sel.scope.key not in answered and _scope.offer_other_scopes(
            sel, (sel.prompt_set,), "answers to this prompt set"
        ):
            return
    st.info(
        "Nothing stored for this prompt with this model and settings yet. Press “Generate missing "
        "depths”, or run a sweep (Depth sweep page)."
    )


def model_status(sel: Selection, n_layers: int | None) -> None:
    loaded = _models.model_hub().get(sel.model) is not None
    state = "loaded" if loaded else "not loaded yet: it loads on the first Generate (≈ 15 s for the default)"
    layers = f"{n_layers} layers" if n_layers else "layer count unknown"
    st.caption(
        f"Model: {_display.md_escape(_display.short_name(sel.model))} · {layers} · {state}",
        help=_display.model_help(sel.model),
    )


def offer_model_load(sel: Selection) -> None:
    st.info(
        "DepthScope cannot tell this model's layer count without loading it. Press Load model "
        "(a checkpoint folder with config.json, or a .gguf file)."
    )
    load = lambda: _models.model_hub().load(sel.model)  # noqa: E731
    if st.button("Load model", type="primary") and _jobs.run_now("Loading the model…", load) is not None:
        st.rerun()


def main() -> None:
    page = start_page(
        "Prompt explorer",
        "Pick one prompt and see what the model answers when it keeps only its first k layers. Answers "
        "already in the database appear at once; press Generate for the missing depths.",
    )
    if page is None:
        return
    sel, store = page.sel, page.store
    prompt = pick_prompt(sel)
    if prompt is None:
        return
    info = _models.model_info(sel.model, store)
    n_layers = _models.n_layers_of(sel.model, info)
    model_status(sel, n_layers)
    lens_problem = sel.lens_problem(info.model_hash if info else None)
    if lens_problem:
        st.error(_display.md_escape(lens_problem), icon=":material/error:")
    if n_layers is None:
        offer_model_load(sel)
        return
    focus, compare = pick_depths(n_layers)
    wanted = [focus, *compare]
    found = (
        _queries.answers(
            sel.db, info.model_hash, prompt, tuple(wanted), sel.static_params(info.model_hash).key()
        )
        if info
        else _queries.NO_ANSWERS
    )
    missing = [k for k in wanted if k not in found.completions]
    buttons = st.columns([2, 2, 3])
    if buttons[0].button(
        f"Generate missing depths ({len(missing)})", type="primary", disabled=not missing, key="generate"
    ):
        answer(sel, store, prompt, missing, exit_rule=False)
    if buttons[1].button("Logit lens for this prompt", key="lens"):
        logit_lens(sel, prompt)
    auto = buttons[2].toggle(
        "Auto-generate the slider's depth",
        key="auto-generate",
        persist_state="session",
        help="When the slider lands on a depth with no stored answer, generate it at once (only after the "
        "model has been loaded by a first Generate).",
    )
    if auto and focus in missing and _models.model_hub().get(sel.model) is not None:
        answer(sel, store, prompt, [focus], exit_rule=False)
    if not found.completions:
        nothing_stored(sel, prompt)
    show_cards(store, n_layers, focus, compare, found)
    show_lens(sel, prompt, n_layers)
    early_exit_section(sel, store, prompt, info, n_layers)


main()
