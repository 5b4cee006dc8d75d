"""Why the tuned lens has rank-16 translators: every rank trained on the course corpus, measured on
held-out text and on its own training text (full-vocabulary KL to the final layer, mean over
layers 0-29), side by side in one run.

Run with `.venv/bin/python benchmarks/tuned_lens_ranks.py` (about 5 minutes on 2 cores). Writes
benchmarks/results/tuned_lens_ranks.md; the README quotes it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from course_lib.data.lens_corpus import EVAL_PROMPTS, HELD_OUT_TEXTS, TRAIN_TEXTS
from course_lib.models import load_model
from course_lib.tuned_lens import TunedLens, mean_kl_per_layer, train_tuned_lens

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    model = load_model()
    held_out = list(HELD_OUT_TEXTS) + [p for p, _ in EVAL_PROMPTS]
    train_sample = list(TRAIN_TEXTS[:20])
    logit_held = float(mean_kl_per_layer(model, held_out)[:-1].mean())
    logit_train = float(mean_kl_per_layer(model, train_sample)[:-1].mean())
    rows = [("logit lens (no translator)", 0, 0.0, logit_train, logit_held)]
    for rank in (0, 4, 16, 64, None):
        start = time.perf_counter()
        with torch.enable_grad():
            lens = train_tuned_lens(model, TRAIN_TEXTS, rank=rank, progress=False)
        seconds = time.perf_counter() - start
        n_params = sum(p.numel() for p in TunedLens(model.cfg.n_layers, model.cfg.d_model, rank=rank).parameters())
        train_kl = float(mean_kl_per_layer(model, train_sample, lens)[:-1].mean())
        held_kl = float(mean_kl_per_layer(model, held_out, lens)[:-1].mean())
        rows.append((f"tuned lens, rank {'full (576)' if rank is None else rank}", n_params, seconds, train_kl, held_kl))
        print(rows[-1], flush=True)
    lines = ["| lens | parameters | training time | KL on training text | KL on held-out text |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {n / 1e6:.2f} M | {t:.0f} s | {tr:.2f} | {he:.2f} |" for name, n, t, tr, he in rows]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "tuned_lens_ranks.md").write_text(
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores. KL(final || layer) in nats, full vocabulary, "
        f"mean over layers 0-29 and every token; training text: the first 20 training sentences; held-out: "
        f"{len(HELD_OUT_TEXTS)} held-out sentences and the {len(EVAL_PROMPTS)} lecture prompts.\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
