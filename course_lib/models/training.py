"""Synthetic data and reproducible training of the shipped toy checkpoints.

Two kinds of sequence, each starting with the BOS token 0:

* repeated: a random prefix of 4..23 tokens repeated cyclically to fill the context. Predicting
  the second copy needs an induction head (two layers); a single layer can only learn "tokens
  seen before are likely again" (copying).
* skip-trigram: random filler with planted patterns "A ... B C": whenever trigger A occurred
  earlier and the current token is B, the next token is C. One layer learns these exactly
  (B attends to A through the QK circuit, the OV circuit maps A to C).

`train_toy(name)` is deterministic for a given seed: a test retrains and compares with the
shipped file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from course_lib.models.toy import CHECKPOINT_DIR, AttnOnlyTransformer, ToyConfig, save_toy

# Planted skip-trigrams (A, B, C): "A ... B" -> "C". Each B comes in two triples with different
# A and C, so the token after B cannot be predicted from B alone (a bigram): the model must look
# back for A. Tokens 1..20 are reserved for them; filler and repeated prefixes use 21..63.
SKIP_TRIGRAMS: tuple[tuple[int, int, int], ...] = (
    (1, 3, 4),
    (2, 3, 5),
    (6, 8, 9),
    (7, 8, 10),
    (11, 13, 14),
    (12, 13, 15),
    (16, 18, 19),
    (17, 18, 20),
)
FIRST_FREE_TOKEN = 21


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one toy training run."""

    n_layers: int
    seed: int = 0
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.1
    repeated_fraction: float = 0.5


TOY_TRAIN_CONFIGS = {
    "attn-only-1l": TrainConfig(n_layers=1, seed=1, repeated_fraction=0.5),
    # Mostly repeated sequences: with weight decay 0.1 the induction circuit forms reliably
    # (previous-token 0.94-0.96, induction 0.90-0.91 over seeds 2-4); weight decay 0.3-1.0 or a
    # larger share of skip-trigram data left both scores near 0.7 after 1200 steps.
    "attn-only-2l": TrainConfig(n_layers=2, seed=2, repeated_fraction=0.9),
}


def repeated_sequences(
    n: int, cfg: ToyConfig, generator: torch.Generator, min_len: int = 4, max_len: int = 23
) -> Int[Tensor, "n n_ctx"]:
    """BOS followed by a random prefix (length min_len..max_len) repeated to fill n_ctx."""
    seqs = torch.empty(n, cfg.n_ctx, dtype=torch.long)
    seqs[:, 0] = cfg.bos_token_id
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    for i in range(n):
        prefix = torch.randint(FIRST_FREE_TOKEN, cfg.d_vocab, (int(lengths[i]),), generator=generator)
        reps = (cfg.n_ctx - 1) // len(prefix) + 1
        seqs[i, 1:] = prefix.repeat(reps)[: cfg.n_ctx - 1]
    return seqs


def skip_trigram_sequences(
    n: int, cfg: ToyConfig, generator: torch.Generator, patterns_per_seq: int = 4
) -> Int[Tensor, "n n_ctx"]:
    """BOS + random filler with `patterns_per_seq` planted "A ... B C" skip-trigrams."""
    seqs = torch.randint(FIRST_FREE_TOKEN, cfg.d_vocab, (n, cfg.n_ctx), generator=generator)
    seqs[:, 0] = cfg.bos_token_id
    slot = (cfg.n_ctx - 1) // patterns_per_seq  # each pattern lives in its own slot of the sequence
    for i in range(n):
        for j in range(patterns_per_seq):
            a, b, c = SKIP_TRIGRAMS[int(torch.randint(len(SKIP_TRIGRAMS), (1,), generator=generator))]
            start = 1 + j * slot
            gap = int(torch.randint(1, slot - 2, (1,), generator=generator))
            seqs[i, start] = a
            seqs[i, start + gap] = b
            seqs[i, start + gap + 1] = c
    return seqs


def training_batch(cfg: ToyConfig, train_cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """A batch mixing repeated and skip-trigram sequences, in a fixed order for the seed."""
    n_rep = round(train_cfg.batch_size * train_cfg.repeated_fraction)
    rep = repeated_sequences(n_rep, cfg, generator)
    skip = skip_trigram_sequences(train_cfg.batch_size - n_rep, cfg, generator)
    return torch.cat([rep, skip])


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def train_toy(name: str, steps: int | None = None, log_every: int = 0) -> AttnOnlyTransformer:
    """Train the toy model `name` from its fixed seed and return it (deterministic)."""
    if name not in TOY_TRAIN_CONFIGS:
        raise ValueError(f"Unknown toy model {name!r}. Choose one of {list(TOY_TRAIN_CONFIGS)}.")
    train_cfg = TOY_TRAIN_CONFIGS[name]
    cfg = ToyConfig(n_layers=train_cfg.n_layers)
    model = AttnOnlyTransformer(cfg)
    model.init_weights(torch.Generator().manual_seed(train_cfg.seed))
    data_gen = torch.Generator().manual_seed(train_cfg.seed + 1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    model.train()
    for step in range(steps if steps is not None else train_cfg.steps):
        tokens = training_batch(cfg, train_cfg, data_gen)
        loss = next_token_loss(model(tokens), tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log_every and step % log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}")
    model.eval()
    return model


def train_and_save(name: str, out_dir: Path = CHECKPOINT_DIR) -> Path:
    """Train `name` and write `<out_dir>/<name>.safetensors`; returns the path."""
    start = time.perf_counter()
    model = train_toy(name, log_every=200)
    path = Path(out_dir) / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_toy(model, path)
    print(f"trained {name} in {time.perf_counter() - start:.1f} s -> {path}")
    return path
