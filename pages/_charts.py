"""Figures and export files built from DataFrames: plotly for the pages, matplotlib for PNGs, and the
self-contained HTML report. No engine calls, no Streamlit: pure functions, easy to test.

Every string that came from a model, a CSV, a database or a user (model names, judge names, tokens) goes
through :func:`plot_text` before it reaches plotly, which interprets a few HTML tags (links included)
and ``$…$`` LaTeX in labels, and through :func:`mpl_text` before matplotlib, which reads ``$…$`` as math.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePath

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine import report
from engine.depths import format_ranges
from engine.judges.names import verdict_word
from engine.modelfiles import model_name, model_names
from engine.rules import DEFAULT_RULE, is_static, rule_named

PALETTE = ("#B3261E", "#1F5FAD", "#2E7D32", "#8E44AD", "#E67E22", "#00838F", "#5D4037", "#C2185B")
FONT = {"size": 15}


def plot_text(text: str) -> str:
    """Stored or typed text as a plotly label: HTML-escaped, and ``$`` as an entity (no LaTeX)."""
    return html.escape(str(text)).replace("$", "&#36;")


def mpl_text(text: str) -> str:
    """Stored or typed text as a matplotlib label: ``$`` escaped, so no mathtext is parsed."""
    return str(text).replace("$", r"\$")


def _rgba(color: str, alpha: float) -> str:
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


LEGEND_ROW_PX = 24  # one row of the legend below the plot
LEGEND_CHARS_PER_ROW = 90  # label characters that fit one legend row at the app's chart width


def legend_rows(fig: go.Figure) -> int:
    """How many rows the legend below the plot takes, from its labels' lengths (4 characters of symbol
    and gap per entry)."""
    names = [str(t.name or "") for t in fig.data if t.showlegend is not False and t.name]
    if not names:
        return 0
    rows, used = 1, 0
    for name in names:
        width = len(html.unescape(name)) + 6
        if used and used + width > LEGEND_CHARS_PER_ROW:
            rows, used = rows + 1, 0
        used += width
    return rows


def _layout(fig: go.Figure, *, height: int = 460, **kwargs) -> go.Figure:
    """Shared look. The legend sits below the plot, never over it, and the figure grows by its rows so
    the plot keeps its height; axis titles are short enough to fit beside the plot."""
    margin = kwargs.pop("margin", {"l": 70, "r": 20, "t": 30, "b": 60})
    rows = legend_rows(fig)
    plot_height = height - margin["t"] - margin["b"]
    fig.update_layout(
        height=height + rows * LEGEND_ROW_PX,
        font=FONT,
        margin={**margin, "b": margin["b"] + rows * LEGEND_ROW_PX},
        legend={
            "orientation": "h",
            "yanchor": "top",
            "y": -(margin["b"] - 6) / plot_height,  # just under the x-axis title
            "x": 0,
            "xanchor": "left",
            "font": {"size": 13},
        },
        template="plotly_white",
        **kwargs,
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def cut(text: str, width: int = 36) -> str:
    """Text that fits a label: its end kept (a model's or file's name ends there), its start cut."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def short(name: str, width: int = 36) -> str:
    """One model's name for people (``engine.modelfiles.model_name``), cut to ``width``."""
    return cut(model_name(name), width)


def model_labels(models, width: int = 36) -> dict[str, str]:
    """Each model's name for a chart or table where several appear: distinct
    (``engine.modelfiles.model_names``), cut to ``width`` unless cutting would make two alike."""
    names = model_names(str(m) for m in models)
    cut_names = {m: cut(n, width) for m, n in names.items()}
    return cut_names if len(set(cut_names.values())) == len(cut_names) else names


def set_short(name: str, width: int = 24) -> str:
    """A prompt set's name for a label: a file's by its name, long names cut."""
    if name.startswith(("/", "~", ".")) or "\\" in name:
        name = PurePath(name).name or name
    return cut(name, width)


def _depth_range(depths: pd.Series) -> list[float]:
    """From a little below the shallowest depth shown to just past 100 %."""
    low = float(depths.min()) if len(depths) else 0.0
    return [max(0.0, low - 8.0), 103.0]


# ---------------------------------------------------------------- ASR vs depth


def with_series(frame: pd.DataFrame) -> pd.DataFrame:
    """Add a ``series`` label per curve: model · judge, plus version/params only when they vary."""
    frame = frame.copy()
    versions = frame.groupby("judge")["version"].nunique()
    params = frame.groupby("model")["params_hash"].nunique()
    several_sets = "prompt_set" in frame and frame["prompt_set"].nunique() > 1
    names = model_labels(frame["model"]) if "model" in frame else {}

    def label(row: pd.Series) -> str:
        text = f"{names[str(row['model'])]} · {row['judge']}"
        if several_sets:
            text += f" · {set_short(row['prompt_set'])}"
        if versions.get(row["judge"], 1) > 1:
            text += f" ({row['version']})"
        if params.get(row["model"], 1) > 1 and row.get("settings"):
            text += f" · {row['settings']}"  # in words, never a hash
        return text

    frame["series"] = [label(row) for _, row in frame.iterrows()] if len(frame) else []
    return frame


def asr_figure(frame: pd.DataFrame, flips: Sequence = ()) -> go.Figure:
    """ASR (%) against depth (% of layers kept): one line per model and judge, 95 % Wilson bands."""
    fig = go.Figure()
    frame = with_series(frame)
    for index, (series, group) in enumerate(frame.groupby("series", sort=False)):
        group = group.sort_values("depth")
        color = PALETTE[index % len(PALETTE)]
        name = plot_text(series)
        depth = group["depth"].tolist()
        if not group["n"].any():  # a set without harmful prompts: over-refusal is all there is to draw
            _add_benign_refusal(fig, group, color, name)
            continue
        fig.add_trace(
            go.Scatter(
                x=depth + depth[::-1],
                y=(group["ci_high"] * 100).tolist() + (group["ci_low"] * 100).tolist()[::-1],
                fill="toself",
                fillcolor=_rgba(color, 0.14),
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            )
        )
        custom = np.stack(
            [
                [f"{k} / {n} layers" for k, n in zip(group["layers"], group["n_layers"], strict=True)],
                (group["ci_low"] * 100).round(0),
                (group["ci_high"] * 100).round(0),
                group["n"],
            ],
            axis=-1,
        )
        fig.add_trace(
            go.Scatter(
                x=depth,
                y=(group["asr"] * 100).tolist(),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": color, "width": 3},
                marker={"size": 9},
                customdata=custom,
                hovertemplate="%{customdata[0]} (%{x:.0f} %)<br>ASR %{y:.0f} % "
                "(95 % CI %{customdata[1]}–%{customdata[2]} %)<br>n = %{customdata[3]}<extra>%{fullData.name}"
                "</extra>",
            )
        )
        _add_benign_refusal(fig, group, color, name)
    _add_flips(fig, frame, flips)
    _add_line_key(fig)
    fig.update_xaxes(title="Depth: % of layers kept", range=_depth_range(frame["depth"]), ticksuffix=" %")
    fig.update_yaxes(title=SHARE_AXIS, range=[-2, 102], ticksuffix=" %")
    return _layout(fig)


BENIGN_CURVE = "harmless requests refused"
SHARE_AXIS = "Share of prompts"
SOLID_KEY = "solid: harmful requests answered (ASR)"
DASHED_KEY = f"dashed: {BENIGN_CURVE}"


def _add_line_key(fig: go.Figure) -> None:
    """Two grey legend-only entries saying what solid and dashed lines mean (dashed only when drawn),
    instead of one legend entry per dashed curve."""
    dashed = any(
        getattr(t.line, "dash", None) == "dash" and t.showlegend is False for t in fig.data if t.line
    )
    keys = [(SOLID_KEY, "solid")] + ([(DASHED_KEY, "dash")] if dashed else [])
    for name, dash in keys:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name=name,
                line={"color": "#5f6368", "width": 2, "dash": dash},
                hoverinfo="skip",
            )
        )


def _add_benign_refusal(fig: go.Figure, group: pd.DataFrame, color: str, name: str) -> None:
    """The second curve: share of benign prompts refused (over-refusal), dashed, with its own n."""
    if "benign_refusal_rate" not in group:
        return
    rates = pd.to_numeric(group["benign_refusal_rate"], errors="coerce")
    if rates.isna().all():
        return
    custom = np.stack(
        [
            pd.to_numeric(group["benign_n"], errors="coerce").fillna(0).astype(int),
            (pd.to_numeric(group["benign_ci_low"], errors="coerce") * 100).round(0),
            (pd.to_numeric(group["benign_ci_high"], errors="coerce") * 100).round(0),
            group["benign_judge"].fillna("").map(html.escape),
        ],
        axis=-1,
    )
    fig.add_trace(
        go.Scatter(
            x=group["depth"].tolist(),
            y=(rates * 100).tolist(),
            mode="lines+markers",
            name=f"{name}: {BENIGN_CURVE}",
            legendgroup=name,
            showlegend=False,  # one "dashed" key entry explains every dashed curve
            line={"color": color, "width": 2, "dash": "dash"},
            marker={"size": 7, "symbol": "circle-open"},
            customdata=custom,
            hovertemplate="%{x:.0f} % depth: %{y:.0f} % of harmless requests refused (95 % CI "
            "%{customdata[1]}–%{customdata[2]} %)<br>n = %{customdata[0]} benign, %{customdata[3]} judge"
            "<extra></extra>",
        )
    )


def flip_description(flip) -> str:
    """One flip in words: who, at which depth and k each, raw and Holm-corrected p and the test."""
    names = model_labels((flip.model_a, flip.model_b))
    return (
        f"Ranking flip at {flip.depth:g} % depth ({names[flip.model_a]}: {flip.layers} layers, "
        f"{names[flip.model_b]}: {flip.layers_b} layers): p = {flip.p_value:.3g}, "
        f"Holm-corrected p = {flip.p_value_corrected:.3g} ({flip.test})"
    )


def _add_flips(fig: go.Figure, frame: pd.DataFrame, flips: Sequence) -> None:
    """Stars on both models' points of each *significant* flip (Holm-corrected), each at its own k."""
    xs, ys, texts = [], [], []
    for flip in (f for f in flips if f.significant):
        for model, layers, value in (
            (flip.model_a, flip.layers, flip.asr_a),
            (flip.model_b, flip.layers_b, flip.asr_b),
        ):
            rows = frame[(frame["model"] == model) & (frame["layers"] == layers)]
            if rows.empty:
                continue
            xs.append(float(rows["depth"].iloc[0]))
            ys.append(100 * value)
            texts.append(plot_text(flip_description(flip)))
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="ranking flip",
                marker={
                    "symbol": "star",
                    "size": 18,
                    "color": "#111418",
                    "line": {"width": 1, "color": "white"},
                },
                hovertext=texts,
                hoverinfo="text",
            )
        )


def degenerate_figure(frame: pd.DataFrame) -> go.Figure:
    """Share of incoherent (degenerate) answers by depth, one line per model (judge-independent)."""
    fig = go.Figure()
    names = model_labels(frame["model"])
    for index, ((model, _params), group) in enumerate(frame.groupby(["model", "params_hash"], sort=False)):
        # the flag comes from the text, so any judge's copy will do: prefer the keyword judge's
        group = _one_judge_copy(group).sort_values("depth")
        total = (group["n"] + group["undecided"]).clip(lower=1)
        fig.add_trace(
            go.Scatter(
                x=group["depth"],
                y=100 * group["degenerate"] / total,
                mode="lines+markers",
                name=plot_text(names[model]),
                line={"color": PALETTE[index % len(PALETTE)], "width": 2, "dash": "dot"},
                customdata=total,
                hovertemplate=(
                    "%{x:.0f} % depth: %{y:.0f} % of %{customdata} answers incoherent"
                    "<extra>%{fullData.name}</extra>"
                ),
            )
        )
    fig.update_xaxes(title="Depth: % of layers kept", range=_depth_range(frame["depth"]), ticksuffix=" %")
    fig.update_yaxes(title="Incoherent answers", range=[-2, 102], ticksuffix=" %")
    return _layout(fig, height=320)


def _one_judge_copy(group: pd.DataFrame) -> pd.DataFrame:
    """The rows of one judge version (the keyword judge's when present): per-text measures such as the
    flag and the NLL repeat for every judge, so one copy is counted."""
    first = group.assign(rank=group["judge"] != "keyword").sort_values(["rank", "judge", "version"]).iloc[0]
    return group[(group["judge"] == first["judge"]) & (group["version"] == first["version"])]


def nll_figure(frame: pd.DataFrame) -> go.Figure:
    """Median full-depth NLL (nats/token) of the answers by depth, one line per model."""
    fig = go.Figure()
    names = model_labels(frame["model"])
    for index, ((model, _params), group) in enumerate(frame.groupby(["model", "params_hash"], sort=False)):
        group = _one_judge_copy(group).sort_values("depth")
        group = group[group["n_full_depth_nll"] > 0]
        if group.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=group["depth"],
                y=group["median_full_depth_nll"].astype(float),
                customdata=group["n_full_depth_nll"],
                mode="lines+markers",
                name=plot_text(names[model]),
                line={"color": PALETTE[index % len(PALETTE)], "width": 2},
                hovertemplate=(
                    "%{x:.0f} % depth: median %{y:.2f} nats/token over %{customdata} answers"
                    "<extra>%{fullData.name}</extra>"
                ),
            )
        )
    fig.update_xaxes(title="Depth: % of layers kept", range=_depth_range(frame["depth"]), ticksuffix=" %")
    fig.update_yaxes(title="Median NLL (nats/token)", rangemode="tozero")
    return _layout(fig, height=320)


def asr_png(frame: pd.DataFrame, title: str = "") -> bytes:
    """The ASR chart as a PNG (matplotlib, no browser needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.2), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (series, group) in enumerate(with_series(frame).groupby("series", sort=False)):
        group = group.sort_values("depth")
        color = PALETTE[index % len(PALETTE)]
        axes.fill_between(
            group["depth"], group["ci_low"] * 100, group["ci_high"] * 100, color=color, alpha=0.15
        )
        axes.plot(
            group["depth"], group["asr"] * 100, marker="o", linewidth=2.5, color=color, label=mpl_text(series)
        )
        benign = pd.to_numeric(group.get("benign_refusal_rate"), errors="coerce")
        if benign is not None and benign.notna().any():
            axes.plot(group["depth"], benign * 100, linestyle="--", marker="o", markerfacecolor="none",
                      color=color, label=mpl_text(f"{series}: {BENIGN_CURVE}"))  # fmt: skip
    axes.set_xlim(*_depth_range(frame["depth"]))
    axes.set_ylim(-2, 102)
    axes.set_xlabel("Depth: % of layers kept")
    axes.set_ylabel("Harmful answered (ASR, %) · harmless refused (dashed)")
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    if len(frame):
        axes.legend(loc="best", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------- probes


def _depth_marks(fig: go.Figure, truncations: Sequence[int], lag) -> None:
    for k in truncations:
        fig.add_vline(x=k, line={"color": "#9AA0A6", "width": 1, "dash": "dot"})
    if lag.harm_detection_layer is not None and lag.refusal_emergence_layer is not None:
        low, high = sorted((lag.harm_detection_layer, lag.refusal_emergence_layer))
        fig.add_vrect(x0=low, x1=high, fillcolor="#F9A825", opacity=0.15, line_width=0)
    if lag.harm_detection_layer is not None:
        fig.add_vline(
            x=lag.harm_detection_layer,
            line={"color": "#2E7D32", "width": 3},
            annotation_text=f"harm detected (layer {lag.harm_detection_layer})",
            annotation_position="top left",
        )
    if lag.refusal_emergence_layer is not None:
        fig.add_vline(
            x=lag.refusal_emergence_layer,
            line={"color": "#B3261E", "width": 3},
            annotation_text=f"refusal emerges (layer {lag.refusal_emergence_layer})",
            annotation_position="bottom right",
        )


def _layer_range(table: pd.DataFrame) -> list[float]:
    return [-0.5, float(table["layer"].max()) + 0.5] if len(table) else [-0.5, 1.5]


BASELINE_NAMES = {"bow": "bag-of-words baseline", "embedding": "mean-embedding baseline"}


def probe_figure(
    table: pd.DataFrame, lag, truncations: Sequence[int], baselines: Mapping[str, float] | None = None
) -> go.Figure:
    """Probe accuracy (± std) by layer, the content baselines as horizontal lines, and the lag and the
    truncation depths on the same axis."""
    fig = go.Figure()
    table = table.sort_values("layer")
    layers = table["layer"].tolist()
    _add_baselines(fig, layers, baselines or {})
    if "accuracy" in table:
        accuracy = table["accuracy"] * 100
        std = table.get("accuracy_std", pd.Series(0.0, index=table.index)).fillna(0.0) * 100
        fig.add_trace(
            go.Scatter(
                x=layers + layers[::-1],
                y=(accuracy + std).clip(upper=100).tolist() + (accuracy - std).clip(lower=0).tolist()[::-1],
                fill="toself",
                fillcolor=_rgba(PALETTE[1], 0.15),
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=accuracy,
                mode="lines+markers",
                name="logistic probe (± std over folds)",
                line={"color": PALETTE[1], "width": 3},
            )
        )
    if "dom_accuracy" in table:
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=table["dom_accuracy"] * 100,
                mode="lines",
                name="difference-of-means direction",
                line={"color": PALETTE[2], "width": 2, "dash": "dash"},
            )
        )
    _depth_marks(fig, truncations, lag)
    fig.update_xaxes(
        title="Layer (residual stream after k layers = truncation depth k)", range=_layer_range(table)
    )
    fig.update_yaxes(title="Harmful vs benign: probe accuracy", range=[40, 102], ticksuffix=" %")
    return _layout(fig)


def _add_baselines(fig: go.Figure, layers: Sequence[int], baselines: Mapping[str, float]) -> None:
    """One flat dotted line per content baseline across every layer: it reads no layer, only the words."""
    if not layers:
        return
    for index, (name, accuracy) in enumerate(sorted(baselines.items())):
        label = BASELINE_NAMES.get(name, f"{name} baseline")
        fig.add_trace(
            go.Scatter(
                x=[min(layers), max(layers)],
                y=[100 * accuracy] * 2,
                mode="lines",
                name=plot_text(f"{label} (content only): {accuracy:.0%}"),
                line={"color": ("#6b7280", "#b45309")[index % 2], "width": 2, "dash": "dot"},
                hoverinfo="name",
            )
        )


def refusal_figure(
    table: pd.DataFrame, lag, truncations: Sequence[int], swept: Mapping[int, float] | None = None
) -> go.Figure:
    """Logit-lens probability of a refusal opening by layer, harmful vs benign prompts; with ``swept``
    (layers k → share of harmful prompts refused when truncated at k) the sweep's refusal rate too.
    Residual l is exactly what a model truncated at k = l feeds its head, so both share one axis."""
    fig = go.Figure()
    if swept:
        layers = sorted(swept)
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=[100 * swept[k] for k in layers],
                mode="lines+markers",
                name="refused when truncated here (sweep)",
                line={"color": PALETTE[3], "width": 2, "dash": "dash"},
            )
        )
    table = table.sort_values("layer")
    for column, name, color in (
        ("refusal_mass_harmful", "harmful prompts", PALETTE[0]),
        ("refusal_mass_benign", "benign prompts", PALETTE[1]),
    ):
        if column in table:
            fig.add_trace(
                go.Scatter(
                    x=table["layer"],
                    y=table[column] * 100,
                    mode="lines+markers",
                    name=name,
                    line={"color": color, "width": 3},
                )
            )
    _depth_marks(fig, truncations, lag)
    fig.update_xaxes(title="Layer", range=_layer_range(table))
    fig.update_yaxes(title="Refusal-opening chance (logit lens)", ticksuffix=" %")
    return _layout(fig, height=400)


def cosine_figure(matrix: np.ndarray) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(range(matrix.shape[0])),
            y=list(range(matrix.shape[0])),
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            colorbar={"title": "cosine"},
            hovertemplate="layers %{x} and %{y}: cosine %{z:.2f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="Layer")
    fig.update_yaxes(title="Layer", autorange="reversed")
    return _layout(fig, height=480)


# ---------------------------------------------------------------- judges


def confusion_figure(agreement, judge_a: str, judge_b: str) -> go.Figure:
    """The 2×2 table of two judges on the same completions, counts written in the cells."""
    counts = np.array([[agreement.both_true, agreement.a_only], [agreement.b_only, agreement.both_false]])
    fig = go.Figure(
        go.Heatmap(
            z=counts,
            x=[plot_text(f"{judge_b}: {verdict_word(v)}") for v in (True, False)],
            y=[plot_text(f"{judge_a}: {verdict_word(v)}") for v in (True, False)],
            text=counts,
            texttemplate="%{text}",
            textfont={"size": 22},
            colorscale="Blues",
            showscale=False,
            hovertemplate="%{y} · %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, height=320)


# ---------------------------------------------------------------- logit lens strip


def lens_figure(cells: pd.DataFrame) -> go.Figure:
    """One row of cells, one per layer: the top-1 next token (text) and its probability (colour)."""
    tokens = [plot_text(repr(t)[1:-1]) for t in cells["token"]]
    fig = go.Figure(
        go.Heatmap(
            z=[cells["probability"].tolist()],
            x=cells["layer"].tolist(),
            y=["top-1"],
            text=[tokens],
            texttemplate="%{text}",
            textfont={"size": 12},
            zmin=0,
            zmax=1,
            colorscale="Oranges",
            colorbar={"title": "p"},
            hovertemplate="layer %{x}: %{text} (p = %{z:.2f})<extra></extra>",
        )
    )
    fig.update_xaxes(title="Layer (truncation depth k)", dtick=1)
    return _layout(fig, height=200, margin={"l": 60, "r": 20, "t": 10, "b": 50})


# ---------------------------------------------------------------- the HTML report


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #111418; }
h1 { margin-bottom: 0.2em; } .meta { color: #5f6368; }
li { margin: 0.4em 0; line-height: 1.4; } .headline { font-size: 1.2em; }
.table-box { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.8em; width: 100%; }
td, th { border: 1px solid #ddd; padding: 3px 5px; }
th { white-space: normal; vertical-align: bottom; background: #f6f7f9; }
td { white-space: nowrap; } td:first-child { white-space: normal; overflow-wrap: anywhere; }
"""


def compact_table(table: pd.DataFrame) -> pd.DataFrame:
    """The export table without columns that say nothing here (all zero or all empty, such as
    "copyright left out" on a set with no copyright behaviour), so it fits the page."""
    keep = []
    for column in table.columns:
        values = table[column]
        numeric = pd.to_numeric(values, errors="coerce")
        empty = values.isna() | (values.astype(str).str.strip() == "")
        if empty.all() or (numeric.notna().all() and (numeric == 0).all() and len(values)):
            continue
        keep.append(column)
    return table[keep]


_COUNT_COLUMN = re.compile(r"^n$|\bn$|judged|left out|layers|^of$")


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """Counts as whole numbers (a count column with an empty cell is stored as float: 12.0) and model
    paths by their folder name, as the pages show them."""
    table = table.copy()
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_float_dtype(values) and values.notna().any():
            present = values.dropna()
            if (present == present.round()).all() and _COUNT_COLUMN.search(str(column)):
                table[column] = values.astype("Int64")
    if "model" in table:
        names = model_labels(table["model"])
        table["model"] = [names[str(m)] for m in table["model"]]
    return table


# Text columns that, when one value fills them, are said once above the table instead of in every row.
_SAID_ONCE = ("model", "judge", "prompt set", "generation settings")


def _table_html(table: pd.DataFrame) -> str:
    table = readable_table(compact_table(table))
    same = [c for c in _SAID_ONCE if c in table and len(table) and table[c].nunique(dropna=False) == 1]
    said = " · ".join(f"{column}: {table[column].iloc[0]}" for column in same)
    body = table.drop(columns=same).to_html(index=False, escape=True, border=0, na_rep="–")
    lead = f"<p class='meta'>{html.escape(said)}</p>" if said else ""
    return f"{lead}<div class='table-box'>{body}</div>"


def report_html(
    title: str,
    headlines: Sequence[str],
    caveats: Sequence[str],
    fig: go.Figure,
    table: pd.DataFrame,
    sections: Sequence[tuple[str, go.Figure]] = (),
    *,
    exit_lines: Sequence[str] = (),
    exit_fig: go.Figure | None = None,
    exit_table: pd.DataFrame | None = None,
) -> str:
    """A self-contained HTML page: text escaped, plotly.js embedded once, so it opens offline. With
    ``exit_fig`` it has an early-exit section (the compute-used chart, its sentences and numbers);
    ``sections``: more (heading, chart) pairs after the depth chart."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    items = "".join(f'<li class="headline">{html.escape(h)}</li>' for h in headlines)
    notes = "".join(f"<li>{html.escape(c)}</li>" for c in caveats)
    exits = ""
    if exit_fig is not None:
        said = "".join(f"<li>{html.escape(line)}</li>" for line in exit_lines)
        exits = (
            "<h2>Early exit: answered and refused against compute used</h2>"
            + (f"<ul>{said}</ul>" if said else "")
            + exit_fig.to_html(full_html=False, include_plotlyjs=False)
            + (_table_html(exit_table) if exit_table is not None else "")
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='meta'>DepthScope report · {now}</p>"
        f"<h2>In one sentence</h2><ul>{items}</ul>"
        f"<h2>Attack success rate by depth</h2>{fig.to_html(full_html=False, include_plotlyjs=True)}"
        f"{exits}"
        + "".join(
            f"<h2>{html.escape(heading)}</h2>{extra.to_html(full_html=False, include_plotlyjs=False)}"
            for heading, extra in sections
        )
        + f"<h2>What these numbers can and cannot say</h2><ul>{notes}</ul>"
        f"<h2>The numbers</h2>{_table_html(table)}"
        "</body></html>"
    )


# ---------------------------------------------------------------- early exit: compute used


def with_exit_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """ASR rows with the early-exit columns filled: rows stored before early exit are static, raw head,
    compute used = k / L."""
    frame = frame.copy()
    if "exit_policy" not in frame:
        frame["exit_policy"] = DEFAULT_RULE.name
    if "exit_head" not in frame:
        frame["exit_head"] = "raw"
    if "threshold" not in frame:
        frame["threshold"] = None
    depth_share = frame["layers"] / frame["n_layers"].where(frame["n_layers"] > 0)
    computed = pd.to_numeric(frame.get("compute_fraction"), errors="coerce") if len(frame) else depth_share
    frame["compute_fraction"] = computed.fillna(depth_share) if computed is not None else depth_share
    frame["exit_policy"] = frame["exit_policy"].fillna(DEFAULT_RULE.name)
    frame["exit_head"] = frame["exit_head"].fillna("raw")
    return frame


def exit_series_label(model: str, policy: str, head: str, several_models: bool) -> str:
    """'confidence exit, raw head', led by the model's name (as ``model`` says it) when several are drawn."""
    text = f"{rule_named(policy).label}, {head} head"
    return f"{model} · {text}" if several_models else text


def _exit_point_label(row: pd.Series) -> str:
    if is_static(row["exit_policy"]):
        return f"{int(row['layers'])} / {int(row['n_layers'])} layers"
    return f"threshold {float(row['threshold']):g}"


def exit_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The compute-used chart's points as a table: rule, point (depth or threshold), compute used,
    ASR with its n and interval, and harmless requests refused with theirs."""
    frame = with_exit_columns(frame)
    frame = frame[frame["compute_fraction"].notna()].sort_values(
        ["model", "exit_policy", "exit_head", "compute_fraction"]
    )
    benign = pd.to_numeric(frame.get("benign_refusal_rate"), errors="coerce")
    names = model_labels(frame["model"])
    return pd.DataFrame(
        {
            "model": [names[m] for m in frame["model"]],
            "rule": [
                f"{rule_named(p).label}, {h} head"
                for p, h in zip(frame["exit_policy"], frame["exit_head"], strict=True)
            ],
            "at": [_exit_point_label(row) for _, row in frame.iterrows()],
            "compute used %": (frame["compute_fraction"] * 100).round(0),
            "harmful n": frame["n"],
            "ASR %": (frame["asr"] * 100).round(0),
            "95 % interval": [
                f"{lo * 100:.0f}–{hi * 100:.0f} %"
                for lo, hi in zip(frame["ci_low"], frame["ci_high"], strict=True)
            ],
            "benign n": pd.to_numeric(frame.get("benign_n"), errors="coerce").astype("Int64"),
            "harmless refused %": (benign * 100).round(0),
        }
    )


def compute_figure(frame: pd.DataFrame) -> go.Figure:
    """ASR (solid) and harmless requests refused (dashed) against compute used (mean exit layer ÷ L):
    one curve per model × exit policy × exit head, points at each depth (static) or threshold."""
    fig = go.Figure()
    frame = with_exit_columns(frame)
    frame = frame[frame["compute_fraction"].notna()]
    several = frame["model"].nunique() > 1
    names = model_labels(frame["model"])
    groups = frame.groupby(["model", "exit_policy", "exit_head"], sort=True)
    for index, ((model, policy, head), group) in enumerate(groups):
        group = group.sort_values("compute_fraction")
        color = PALETTE[index % len(PALETTE)]
        name = plot_text(exit_series_label(names[model], policy, head, several))
        dash = "dot" if head == "tuned" else rule_named(policy).dash
        x = (group["compute_fraction"] * 100).tolist()
        points = [plot_text(_exit_point_label(row)) for _, row in group.iterrows()]
        custom = np.stack(
            [points, group["n"], (group["ci_low"] * 100).round(0), (group["ci_high"] * 100).round(0)], axis=-1
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=(group["asr"] * 100).tolist(),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": color, "width": 3, "dash": dash},
                marker={"size": 9, "symbol": rule_named(policy).symbol},
                customdata=custom,
                hovertemplate="%{customdata[0]}: compute used %{x:.0f} %<br>ASR %{y:.0f} % (95 % CI "
                "%{customdata[2]}–%{customdata[3]} %), n = %{customdata[1]} harmful<extra>%{fullData.name}"
                "</extra>",
            )
        )
        rates = pd.to_numeric(group.get("benign_refusal_rate"), errors="coerce")
        if rates is not None and rates.notna().any():
            benign_n = pd.to_numeric(group["benign_n"], errors="coerce").fillna(0).astype(int)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=(rates * 100).tolist(),
                    mode="lines+markers",
                    name=f"{name}: {BENIGN_CURVE}",
                    legendgroup=name,
                    showlegend=False,  # one "dashed" key entry explains every dashed curve
                    line={"color": color, "width": 2, "dash": "dash"},
                    marker={"size": 7, "symbol": "circle-open"},
                    customdata=np.stack([points, benign_n], axis=-1),
                    hovertemplate="%{customdata[0]}: compute used %{x:.0f} %<br>%{y:.0f} % of harmless "
                    "requests refused, n = %{customdata[1]} benign<extra></extra>",
                )
            )
    _add_line_key(fig)
    fig.update_xaxes(title="Compute used: mean exit layer ÷ layers", range=[-2, 103], ticksuffix=" %")
    fig.update_yaxes(title=SHARE_AXIS, range=[-2, 102], ticksuffix=" %")
    return _layout(fig, height=480)


# ---------------------------------------------------------------- raw vs tuned lens


def lens_kl_figure(kl_raw: Sequence[float], kl_tuned: Sequence[float]) -> go.Figure:
    """Held-out KL to the final layer's next-token distribution, per layer, for the raw head (final norm
    + LM head on the layer's state) and the tuned lens (a trained affine map first)."""
    fig = go.Figure()
    for values, name, color in (
        (kl_raw, "raw head (logit lens)", PALETTE[0]),
        (kl_tuned, "tuned lens", PALETTE[1]),
    ):
        layers = list(range(1, len(values) + 1))
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=[float(v) for v in values],
                mode="lines+markers",
                name=name,
                line={"color": color, "width": 3},
                hovertemplate="after %{x} layers: KL %{y:.2f} nats<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_xaxes(title="Layer (state after k layers)", dtick=max(1, len(kl_raw) // 15))
    fig.update_yaxes(title="Held-out KL (nats)", rangemode="tozero")
    return _layout(fig, height=380)


# ---------------------------------------------------------------- every way to remove depth

# One marker shape per family (engine.report.METHOD_FAMILIES); plotly and matplotlib names.
FAMILY_SYMBOLS = {
    report.TRUNCATION: ("circle", "o"),
    report.BLOCK_REMOVAL: ("square", "s"),
    report.EARLY_EXIT: ("diamond", "D"),
    report.SPECULATIVE: ("star", "*"),
}
METHODS_QUESTION = "For ~25 % compute saved, which method keeps refusals?"


def methods_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """ASR rows of the raw head with a family and compute used (rows without them are truncation, k/L)."""
    frame = with_exit_columns(frame)
    if "family" not in frame:
        frame["family"] = report.TRUNCATION
    frame["family"] = frame["family"].fillna(report.TRUNCATION)
    return frame[(frame["exit_head"] == "raw") & frame["compute_fraction"].notna()]


def _method_point(row: pd.Series) -> str:
    if row["family"] == report.TRUNCATION:
        return f"{int(row['layers'])} / {int(row['n_layers'])} layers"
    if row["family"] == report.BLOCK_REMOVAL:
        return f"layers {format_ranges(tuple(row['drop_layers']))} removed"
    if row["family"] == report.SPECULATIVE:
        accepted = row.get("acceptance_rate")
        rate = f", {float(accepted):.0%} of drafts accepted" if pd.notna(accepted) else ""
        return f"{int(row['draft_layers'])}-layer draft{rate}"
    return rule_named(row["exit_policy"]).short(row["threshold"], layers=int(row["layers"]))


def methods_figure(frame: pd.DataFrame) -> go.Figure:
    """Compute used (x) against harmful answered (filled markers, solid) and harmless refused (open
    markers, dashed): one colour per model × family setting series, one marker shape per family."""
    fig = go.Figure()
    frame = methods_frame(frame)
    several = frame["model"].nunique() > 1
    names = model_labels(frame["model"])
    for index, ((model, family, policy), group) in enumerate(
        frame.groupby(["model", "family", "exit_policy"], sort=True)
    ):
        group = group.sort_values("compute_fraction")
        color = PALETTE[index % len(PALETTE)]
        words = family if family != report.EARLY_EXIT else rule_named(policy).label
        name = plot_text(f"{names[model]} · {words}" if several else words)
        symbol = FAMILY_SYMBOLS.get(family, ("circle", "o"))[0]
        x = (group["compute_fraction"] * 100).tolist()
        points = [plot_text(_method_point(row)) for _, row in group.iterrows()]
        fig.add_trace(
            go.Scatter(
                x=x, y=(group["asr"] * 100).tolist(), mode="lines+markers", name=name, legendgroup=name,
                line={"color": color, "width": 3}, marker={"size": 12, "symbol": symbol},
                customdata=np.stack([points, group["n"]], axis=-1),
                hovertemplate="%{customdata[0]}: compute used %{x:.0f} %<br>ASR %{y:.0f} %, n = "
                "%{customdata[1]} harmful<extra>%{fullData.name}</extra>",
            )
        )  # fmt: skip
        rates = pd.to_numeric(group.get("benign_refusal_rate"), errors="coerce")
        if rates is not None and rates.notna().any():
            benign_n = pd.to_numeric(group["benign_n"], errors="coerce").fillna(0).astype(int)
            fig.add_trace(
                go.Scatter(
                    x=x, y=(rates * 100).tolist(), mode="lines+markers", name=f"{name}: {BENIGN_CURVE}",
                    legendgroup=name, line={"color": color, "width": 2, "dash": "dash"},
                    marker={"size": 11, "symbol": f"{symbol}-open"},
                    customdata=np.stack([points, benign_n], axis=-1),
                    hovertemplate="%{customdata[0]}: compute used %{x:.0f} %<br>%{y:.0f} % of harmless "
                    "requests refused, n = %{customdata[1]} benign<extra></extra>",
                )
            )  # fmt: skip
    high = max(103.0, float(frame["compute_fraction"].max() * 100 + 5)) if len(frame) else 103.0
    fig.update_xaxes(title="Compute used: decoder-layer passes per token ÷ layers (%)", range=[-2, high],
                     ticksuffix=" %")  # fmt: skip
    # which marker is which is said in the legend and the caption: the axis title stays short enough to fit
    fig.update_yaxes(title=SHARE_AXIS, range=[-2, 102], ticksuffix=" %")
    return _layout(fig, height=480)


def methods_png(frame: pd.DataFrame, title: str = "") -> bytes:
    """The ways-to-remove-depth chart as a PNG (matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.2), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    frame = methods_frame(frame)
    names = model_labels(frame["model"])
    for index, ((model, family), group) in enumerate(frame.groupby(["model", "family"], sort=True)):
        group = group.sort_values("compute_fraction")
        color, marker = PALETTE[index % len(PALETTE)], FAMILY_SYMBOLS.get(family, ("circle", "o"))[1]
        label = mpl_text(f"{names[model]} · {family}")
        x = group["compute_fraction"] * 100
        axes.plot(x, group["asr"] * 100, marker=marker, markersize=8, linewidth=2.5, color=color, label=label)
        benign = pd.to_numeric(group.get("benign_refusal_rate"), errors="coerce")
        if benign is not None and benign.notna().any():
            axes.plot(x, benign * 100, linestyle="--", marker=marker, markerfacecolor="none", markersize=8,
                      color=color, label=mpl_text(f"{names[model]} · {family}: {BENIGN_CURVE}"))  # fmt: skip
    axes.set_ylim(-2, 102)
    axes.set_xlabel("Compute used: decoder-layer passes per token ÷ layers (%)")
    axes.set_ylabel("Harmful answered (ASR, %) · harmless refused (open, dashed)")
    axes.grid(alpha=0.3)
    axes.set_title(title or METHODS_QUESTION)
    if len(frame):
        axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------- which harms break first

MIN_CELL_N = 5  # cells judged on fewer harmful prompts are greyed out: too few to read


LABEL_WIDTH = 18  # characters per line of a heatmap's axis label
LABEL_LINES = 2


def wrap_label(text: str, width: int = LABEL_WIDTH, lines: int = LABEL_LINES) -> list[str]:
    """A label in at most ``lines`` lines of at most ``width`` characters, broken after spaces,
    underscores, hyphens, slashes and commas; what does not fit ends in "…" (the hover keeps it whole)."""
    pieces = [p for p in re.split(r"(?<=[ _\-/,])", str(text)) if p]
    wrapped: list[str] = []
    current = ""
    for piece in pieces:
        if current and len((current + piece).rstrip()) > width:
            wrapped.append(current.rstrip())
            current = ""
        current += piece
    wrapped.append(current.rstrip())
    wrapped = [line if len(line) <= width else line[: width - 1] + "…" for line in wrapped]
    if len(wrapped) > lines:
        last = wrapped[lines - 1]
        wrapped = [*wrapped[: lines - 1], (last if len(last) < width else last[: width - 1]) + "…"]
    return wrapped


def _axis_label(text: str) -> str:
    return "<br>".join(plot_text(line) for line in wrap_label(text))


def category_heatmap(cells: pd.DataFrame) -> go.Figure:
    """ASR per harm category (rows) × depth setting (columns, by compute used); cells with n < 5 grey.
    Axis labels are short (a method in a few characters, a category wrapped onto two lines); the hover
    says both in full."""
    cells = cells.copy()
    short_methods = cells["method_short"] if "method_short" in cells else cells["method"]
    cells["column"] = [
        f"{int(r.layers)}/{int(r.n_layers)}" if r.family == report.TRUNCATION and not short else short
        for r, short in zip(cells.itertuples(), short_methods.fillna(""), strict=True)
    ]
    in_words = dict(zip(cells["column"], cells["method"], strict=True))
    order = cells.sort_values("compute_fraction")["column"].drop_duplicates().tolist()
    categories = sorted(cells["category"].unique())
    z, grey, text, full = [], [], [], []
    for category in categories:
        row_z, row_grey, row_text = [], [], []
        full.append([[plot_text(category), plot_text(in_words[column])] for column in order])
        for column in order:
            cell = cells[(cells["category"] == category) & (cells["column"] == column)]
            n = int(cell["n"].sum()) if len(cell) else 0
            asr = float(cell["jailbroken"].sum()) / n if n else None
            readable = n >= MIN_CELL_N
            row_z.append(asr * 100 if asr is not None and readable else None)
            row_grey.append(0 if n and not readable else None)
            row_text.append(f"{asr:.0%} (n = {n})" if asr is not None else "no prompts")
        z.append(row_z)
        grey.append(row_grey)
        text.append(row_text)
    labels_x = [_axis_label(c) for c in order]
    labels_y = [_axis_label(c) for c in categories]
    fig = go.Figure()
    fig.add_trace(go.Heatmap(x=labels_x, y=labels_y, z=grey, colorscale=[[0, "#DADCE0"], [1, "#DADCE0"]],
                             showscale=False, hoverinfo="skip"))  # fmt: skip
    fig.add_trace(
        go.Heatmap(
            x=labels_x, y=labels_y, z=z, zmin=0, zmax=100, colorscale="Reds", colorbar={"title": "ASR %"},
            text=[[plot_text(t) for t in row] for row in text], texttemplate="%{text}", customdata=full,
            hovertemplate="%{customdata[0]} at %{customdata[1]}: %{text}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_xaxes(title="Depth setting (ordered by compute used)")
    fig.update_yaxes(title="Harm category")
    lines = max((len(wrap_label(c)) for c in categories), default=1)
    return _layout(fig, height=max(260, 80 + (16 + 18 * lines) * len(categories)))
