"""Synthetic data and reproducible training of the shipped toy checkpoints.

Two kinds of sequence, each starting with the BOS token 0:

* repeated: a random block of 2..24 tokens, drawn from the whole vocabulary 1..63, repeated
  cyclically to fill the context. Predicting the second copy needs an induction head (two
  layers); a single layer can only learn "tokens seen before are likely again" (copying). Short
  blocks are over-sampled so that induction also works at the first positions of a sequence.
* skip-trigram: random filler with planted patterns "A ... B C": when trigger A occurred earlier
  and the current token is B, the next token is C. The triples form a ring (see SKIP_TRIGRAMS),
  so neither B alone (a bigram) nor A alone decides C.

`train_toy(name)` is deterministic on a given machine for a given seed (two runs give identical
weights). Across machines, float kernels differ and so do the weights; the tests compare a
retrained model to the shipped one's behavioural bar (head scores, losses, skip-trigram accuracy).
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

# Planted skip-trigrams "A ... B -> C" in a ring of six triggers A and six current tokens B:
# trigger A_i goes with B_i (-> C_2i) and with B_i+1 (-> C_2i+1), so every A is in two triples
# with different B and C (like "keep ... in -> mind" and "keep ... at -> bay" in Elhage et al.
# 2021), and every B in two triples with different A and C. A head's OV circuit maps A to outputs
# whatever B is, so a head that serves both of A's triples raises both of A's Cs: the paper's
# "keep ... in bay" bug can arise here (notebook 03 measures it).
SKIP_TRIGGERS = tuple(range(1, 7))  # A
SKIP_CURRENT = tuple(range(7, 13))  # B
SKIP_OUTPUTS = tuple(range(13, 25))  # C
SKIP_TRIGRAMS: tuple[tuple[int, int, int], ...] = tuple(
    triple
    for i in range(6)
    for triple in (
        (SKIP_TRIGGERS[i], SKIP_CURRENT[i], SKIP_OUTPUTS[2 * i]),
        (SKIP_TRIGGERS[i], SKIP_CURRENT[(i + 1) % 6], SKIP_OUTPUTS[2 * i + 1]),
    )
)
FIRST_FILLER_TOKEN = 25  # skip-trigram filler uses 25..63, so A, B and C occur only where planted


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one toy training run."""

    n_layers: int
    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.01
    repeated_fraction: float = 0.5
    short_block_fraction: float = 0.4  # share of repeated blocks drawn from lengths 2..8


TOY_TRAIN_CONFIGS = {
    "attn-only-1l": TrainConfig(n_layers=1, seed=1, steps=2000, repeated_fraction=0.3),
    # Mostly repeated sequences. Weight decay 0.01 (not 0.1): with 0.1 the induction heads stayed
    # at 0.6-0.8 on short blocks; over-sampling short blocks lifts them to about 0.8.
    "attn-only-2l": TrainConfig(n_layers=2, seed=2, steps=3000, repeated_fraction=0.9),
}


def repeated_sequences(
    n: int,
    cfg: ToyConfig,
    generator: torch.Generator,
    min_len: int = 2,
    max_len: int = 24,
    short_block_fraction: float = 0.0,
) -> Int[Tensor, "n n_ctx"]:
    """BOS followed by a random block (length min_len..max_len, tokens 1..d_vocab-1) repeated to
    fill n_ctx; a `short_block_fraction` of the blocks has length min_len..8."""
    seqs = torch.empty(n, cfg.n_ctx, dtype=torch.long)
    seqs[:, 0] = cfg.bos_token_id
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    short = torch.randint(min_len, 9, (n,), generator=generator)
    lengths = torch.where(torch.rand(n, generator=generator) < short_block_fraction, short, lengths)
    for i in range(n):
        block = torch.randint(1, cfg.d_vocab, (int(lengths[i]),), generator=generator)
        reps = (cfg.n_ctx - 1) // len(block) + 1
        seqs[i, 1:] = block.repeat(reps)[: cfg.n_ctx - 1]
    return seqs


def skip_trigram_sequences(
    n: int, cfg: ToyConfig, generator: torch.Generator, patterns_per_seq: int = 4, max_gap: int = 8
) -> Int[Tensor, "n n_ctx"]:
    """BOS + random filler with `patterns_per_seq` planted "A ... B C" skip-trigrams: each in its
    own slot of the sequence, at a random offset, with B 1..max_gap positions after A (random
    positions, so a head cannot find A by where it sits)."""
    seqs = torch.randint(FIRST_FILLER_TOKEN, cfg.d_vocab, (n, cfg.n_ctx), generator=generator)
    seqs[:, 0] = cfg.bos_token_id
    slot = (cfg.n_ctx - 1) // patterns_per_seq
    if slot < 4:
        raise ValueError(f"n_ctx {cfg.n_ctx} is too short for {patterns_per_seq} patterns.")
    for i in range(n):
        for j in range(patterns_per_seq):
            a, b, c = SKIP_TRIGRAMS[int(torch.randint(len(SKIP_TRIGRAMS), (1,), generator=generator))]
            gap = int(torch.randint(1, min(max_gap, slot - 2) + 1, (1,), generator=generator))
            offset = int(torch.randint(0, slot - gap - 1, (1,), generator=generator))
            position = 1 + j * slot + offset
            seqs[i, position] = a
            seqs[i, position + gap] = b
            seqs[i, position + gap + 1] = c
    return seqs


def training_batch(cfg: ToyConfig, train_cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """A batch mixing repeated and skip-trigram sequences, in a fixed order for the seed."""
    n_rep = round(train_cfg.batch_size * train_cfg.repeated_fraction)
    rep = repeated_sequences(n_rep, cfg, generator, short_block_fraction=train_cfg.short_block_fraction)
    skip = skip_trigram_sequences(train_cfg.batch_size - n_rep, cfg, generator)
    return torch.cat([rep, skip])


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def train_toy(name: str, steps: int | None = None, log_every: int = 0) -> AttnOnlyTransformer:
    """Train the toy model `name` from its fixed seed and return it (deterministic on one machine)."""
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
    model.requires_grad_(False)
    return model


def train_and_save(name: str, out_dir: Path = CHECKPOINT_DIR) -> Path:
    """Train `name` and write `<out_dir>/<name>.safetensors`; returns the path."""
    start = time.perf_counter()
    model = train_toy(name, log_every=500)
    path = Path(out_dir) / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_toy(model, path)
    print(f"trained {name} in {time.perf_counter() - start:.0f} s -> {path}")
    return path
