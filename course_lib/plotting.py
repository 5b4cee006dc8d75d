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
