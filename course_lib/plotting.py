"""Matplotlib figures used by the notebooks: one function a figure, each returns the figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def lens_grid(tokens: pd.DataFrame, probs: pd.DataFrame, title: str = "", every_nth_layer: int = 1) -> Figure:
    """Layer x position grid: the top token in each cell, coloured by its probability.

    Dark cells are uncertain, light cells certain ("the whiter, the more certain").
    """
    rows = list(range(0, len(tokens), every_nth_layer))
    if rows[-1] != len(tokens) - 1:
        rows.append(len(tokens) - 1)  # always show the final layer
    values = probs.iloc[rows].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * tokens.shape[1] + 2, 0.32 * len(rows) + 1.5))
    image = ax.imshow(values, cmap="gray", vmin=0, vmax=1, aspect="auto", origin="lower")
    for r, layer in enumerate(rows):
        for c in range(tokens.shape[1]):
            text = repr(tokens.iloc[layer, c])[1:-1][:10]
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color="black" if values[r, c] > 0.5 else "white")
    ax.set_xticks(range(tokens.shape[1]), [str(c) for c in tokens.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [str(l) for l in rows], fontsize=7)
    ax.set_ylabel("layer (0 = embeddings)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probability of the top token")
    fig.tight_layout()
    return fig


def answer_trajectory_plot(trajectories: dict[str, pd.DataFrame], title: str = "") -> Figure:
    """Rank (log scale) and log-probability of the answer per layer, one line per label."""
    fig, (ax_rank, ax_lp) = plt.subplots(1, 2, figsize=(10, 3.2))
    for label, df in trajectories.items():
        ax_rank.plot(df.index, np.asarray(df["rank"]) + 1, marker=".", label=label)
        ax_lp.plot(df.index, df["log_prob"], marker=".", label=label)
    ax_rank.set_yscale("log")
    ax_rank.invert_yaxis()
    ax_rank.set_xlabel("layer")
    ax_rank.set_ylabel("rank of the answer + 1 (1 = top)")
    ax_lp.set_xlabel("layer")
    ax_lp.set_ylabel("log-probability of the answer")
    ax_lp.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_layer_lines(values: dict[str, np.ndarray], ylabel: str, title: str = "", logy: bool = False) -> Figure:
    """One line per label over layers (e.g. KL to the final layer for two lenses)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, ys in values.items():
        ax.plot(range(len(ys)), ys, marker=".", label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attention_heads(pattern, str_tokens: list[str], title: str = "", head_labels: list[str] | None = None) -> Figure:
    """One heatmap per head of a pattern [head, query, key]; rows are queries, columns keys."""
    pattern = np.asarray(pattern)
    n_heads = pattern.shape[0]
    fig, axes = plt.subplots(1, n_heads, figsize=(3.2 * n_heads, 3.4), squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(pattern[h], cmap="Blues", vmin=0, vmax=1)
        ax.set_title(head_labels[h] if head_labels else f"head {h}", fontsize=9)
        if len(str_tokens) <= 24:
            ax.set_xticks(range(len(str_tokens)), str_tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(len(str_tokens)), str_tokens, fontsize=6)
        ax.set_xlabel("key")
    axes[0][0].set_ylabel("query")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def score_heatmap(scores, title: str, row_label: str = "layer", col_label: str = "head", fmt: str = "{:.2f}", row_names=None, col_names=None) -> Figure:
    """A matrix of scores with values written in the cells.

    A small matrix (up to 12 rows) shows every value. A taller one (e.g. 30 layers x 9 heads) has
    no room for readable numbers in every cell, so it writes only the notable ones, at least a
    quarter of the largest magnitude, and says so under the plot.
    """
    scores = np.asarray(scores)
    tall = scores.shape[0] > 12
    fig, ax = plt.subplots(figsize=(0.6 * scores.shape[1] + 2, min(0.35 * scores.shape[0] + 1.5, 6.5)))
    image = ax.imshow(scores, cmap="viridis", aspect="auto")
    if scores.size <= 400:
        threshold = 0.25 * float(np.abs(scores).max()) if tall else -np.inf
        for (r, c), value in np.ndenumerate(scores):
            if abs(value) >= threshold:
                ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if value < scores.max() * 0.6 else "black")
        if tall:
            col_label = f"{col_label}\n(numbers written where |value| \u2265 {threshold:.2g}, a quarter of the largest)"
    ax.set_xticks(range(scores.shape[1]), col_names if col_names is not None else range(scores.shape[1]))
    ax.set_yticks(range(scores.shape[0]), row_names if row_names is not None else range(scores.shape[0]))
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def loss_by_position(losses, title: str = "", boundary: int | None = None) -> Figure:
    """Per-token loss along a sequence, with an optional line where the repeat starts."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(np.asarray(losses), marker=".")
    if boundary is not None:
        ax.axvline(boundary - 0.5, color="gray", linestyle="--", label="second copy starts")
        ax.legend()
    ax.set_xlabel("position (predicting the next token)")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def attention_html(str_tokens: list[str], pattern, head_names: list[str] | None = None):
    """circuitsvis attention view with its JavaScript inlined, so it renders with no network."""
    import circuitsvis as cv
    from IPython.display import HTML

    rendered = cv.attention.attention_heads(attention=pattern, tokens=str_tokens, attention_head_names=head_names)
    return HTML(rendered.local_src)


def token_values(pieces: list[str], values, title: str = "") -> Figure:
    """Text pieces in a row, each on a background coloured by its value (blue +, red -)."""
    values = np.asarray(values, dtype=float)
    limit = max(float(np.abs(values).max()), 1e-9)
    cmap = plt.get_cmap("RdBu")
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * len(pieces), 1.4))
    ax.set_xlim(0, len(pieces))
    ax.set_ylim(0, 1)
    ax.axis("off")
    for i, (piece, value) in enumerate(zip(pieces, values)):
        colour = cmap(0.5 + 0.5 * value / limit)
        ax.add_patch(plt.Rectangle((i + 0.03, 0.35), 0.94, 0.5, color=colour))
        ink = "white" if abs(value) / limit > 0.6 else "black"
        ax.text(i + 0.5, 0.6, piece.strip() or repr(piece), ha="center", va="center", fontsize=9, color=ink)
        ax.text(i + 0.5, 0.15, f"{value:+.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def attribution_bars(pieces: list[str], attributions: dict[str, np.ndarray], title: str = "") -> Figure:
    """Grouped bars: one group per text piece, one bar per attribution method."""
    fig, ax = plt.subplots(figsize=(1.0 + 1.1 * len(pieces), 3.2))
    width = 0.8 / max(len(attributions), 1)
    for j, (label, values) in enumerate(attributions.items()):
        xs = np.arange(len(pieces)) + (j - (len(attributions) - 1) / 2) * width
        ax.bar(xs, np.asarray(values, dtype=float), width=width, label=label)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xticks(range(len(pieces)), [repr(p) for p in pieces], fontsize=8)
    ax.set_ylabel("attribution")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def patching_heatmaps(panels: dict[str, np.ndarray], x_labels, title: str = "", x_label: str = "position", y_label: str = "layer", value_label: str = "metric", vmin: float | None = None, vmax: float | None = None) -> Figure:
    """Side-by-side layer x (position or head) heatmaps of patching results, one panel per label.

    Diverging colours centred on 0 (blue up, red down) and one shared colour scale, so panels compare.
    """
    arrays = {k: np.asarray(v, dtype=float) for k, v in panels.items()}
    bound = max(float(np.nanmax(np.abs(a))) for a in arrays.values()) or 1.0
    lo = -bound if vmin is None else vmin
    hi = bound if vmax is None else vmax
    n_rows, n_cols = next(iter(arrays.values())).shape
    fig, axes = plt.subplots(1, len(arrays), figsize=(min(4.5, 0.45 * n_cols + 1.6) * len(arrays) + 1, max(3.2, 0.16 * n_rows + 1.5)), squeeze=False)
    for ax, (label, values) in zip(axes[0], arrays.items()):
        image = ax.imshow(values, cmap="RdBu", vmin=lo, vmax=hi, aspect="auto", origin="lower")
        ax.set_xticks(range(n_cols), [str(x) for x in x_labels], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(0, n_rows, max(1, n_rows // 10)))
        ax.set_xlabel(x_label)
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel(y_label)
    fig.colorbar(image, ax=list(axes[0]), label=value_label, shrink=0.9)
    fig.suptitle(title)
    return fig


def estimate_scatter(panels: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "", x_label: str = "exact patching", y_label: str = "attribution patching") -> Figure:
    """Estimated against exact effects, one panel per label, with the diagonal and the correlation."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False)
    for ax, (label, (exact, estimate)) in zip(axes[0], panels.items()):
        exact, estimate = np.asarray(exact, float).ravel(), np.asarray(estimate, float).ravel()
        ax.scatter(exact, estimate, s=8, alpha=0.6)
        lo, hi = min(exact.min(), estimate.min()), max(exact.max(), estimate.max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        r = np.corrcoef(exact, estimate)[0, 1] if exact.std() > 0 and estimate.std() > 0 else float("nan")
        ax.set_title(f"{label}  (r = {r:.2f})", fontsize=9)
        ax.set_xlabel(x_label)
    axes[0][0].set_ylabel(y_label)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
