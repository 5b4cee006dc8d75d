"""A tuned lens (Belrose et al. 2023): one learned affine translator per layer before the unembedding.

The logit lens assumes every layer speaks the final layer's "language". Early layers do not, so
the logit lens is biased there. A tuned lens learns, for each layer l, an affine map
h -> h + h A_l + b_l (identity at initialisation) such that final_norm_and_unembed of the mapped
stream matches the model's final next-token distribution.

Sized for a CPU and a small course-written corpus, with two departures from the paper, both
stated where they are made: A_l has low rank (`DEFAULT_RANK`) instead of full rank, and the
training loss is the KL divergence KL(final || translated) restricted to (and renormalised over)
the tokens that carry most of the final distributions' probability on the corpus. Evaluation
(`mean_kl_per_layer`) always uses the full vocabulary. The trained translators are cached next
to the model cache, never committed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from course_lib.activations import resid_stack
from course_lib.lens import _single_prompt_tokens, final_norm_and_unembed
from course_lib.tokens import PREPEND_BOS


# Rank 16 (0.57 M parameters): on the course corpus (150 sentences, about 2000 tokens) higher
# ranks lower the held-out KL further (full rank, 10 M parameters: 4.7 nats against 5.9) but fit
# their training text ever more closely (3.2) and train slower; rank 16 keeps training and
# held-out KL close at CPU cost. `benchmarks/tuned_lens_ranks.py` measures every choice.
DEFAULT_RANK = 16


class TunedLens(nn.Module):
    """Per-layer affine translators for layers 0..n_layers-1 (the final layer needs none).

    Layer l maps h -> h + h A_l + b_l, the identity at initialisation. Belrose et al. learn a full
    d_model x d_model matrix A_l; with `rank` set, A_l = U_l V_l^T has that rank (far fewer
    parameters, which small training sets need); rank 0 keeps only the bias b_l."""

    def __init__(self, n_layers: int, d_model: int, rank: int | None = None, seed: int = 0):
        super().__init__()
        self.rank = rank
        self.b = nn.Parameter(torch.zeros(n_layers, d_model))
        if rank is None:
            self.A = nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        elif rank > 0:
            generator = torch.Generator().manual_seed(seed)
            # U random, V zero: the product starts at zero (identity map) and both factors learn.
            self.U = nn.Parameter(torch.randn(n_layers, d_model, rank, generator=generator) / d_model**0.5)
            self.V = nn.Parameter(torch.zeros(n_layers, d_model, rank))

    def forward(self, stack: Float[Tensor, "layer_plus_1 ... d_model"]) -> Float[Tensor, "layer_plus_1 ... d_model"]:
        """Translate a residual stack [n_layers + 1, ..., d_model]; the last slice is unchanged."""
        early = stack[:-1]
        shape = early.shape
        flat = early.reshape(shape[0], -1, shape[-1])
        if self.rank is None:
            change = torch.einsum("lnd,lde->lne", flat, self.A)
        elif self.rank > 0:
            change = torch.einsum("lnr,ler->lne", torch.einsum("lnd,ldr->lnr", flat, self.U), self.V)
        else:
            change = torch.zeros_like(flat)
        translated = flat + change + self.b[:, None]
        return torch.cat([translated.reshape(shape), stack[-1:]])


def collect_residuals(
    model, texts, *, prepend_bos: bool = PREPEND_BOS, batch_size: int = 32
) -> Float[Tensor, "layer_plus_1 n_tokens d_model"]:
    """Residual stacks of every position of every text (the start token left out), concatenated.
    Texts run in right-padded batches; a causal model's real tokens never see the padding."""
    texts = list(texts)
    lengths = [model.to_tokens(t, prepend_bos=prepend_bos).shape[1] for t in texts]
    first = 1 if prepend_bos else 0
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            tokens = model.to_tokens(batch, prepend_bos=prepend_bos, padding_side="right")
            stack = resid_stack(model, tokens)  # [L+1, batch, pos, d]
            for row, length in enumerate(lengths[start : start + batch_size]):
                chunks.append(stack[:, row, first:length])
    return torch.cat(chunks, dim=1)


def _vocab_subset(final_logits: Tensor, size: int) -> tuple[Tensor, float]:
    """The `size` tokens with the most total final-layer probability, and the share of it they hold."""
    probs = final_logits.softmax(dim=-1)
    mass = probs.sum(dim=0)
    vocab = mass.topk(min(size, mass.numel())).indices
    return vocab, float(probs[:, vocab].sum(dim=-1).mean())


def train_tuned_lens(
    model,
    texts,
    *,
    rank: int | None = DEFAULT_RANK,
    steps: int = 150,
    batch_tokens: int = 128,
    vocab_subset: int = 2048,
    lr: float = 2e-3,
    seed: int = 0,
    prepend_bos: bool = PREPEND_BOS,
    progress: bool = True,
) -> TunedLens:
    """Fit the translators by Adam, all layers at once, on the KL divergence KL(final || translated)
    between the final layer's and the translated layer's next-token distributions, both restricted
    to (and renormalised over) the `vocab_subset` tokens that hold most of the final distributions'
    probability on `texts` (its share is stored as `lens.subset_mass`): the full 49152-token KL
    would cost about 25x more per step on a CPU. Evaluation always uses the full vocabulary."""
    stack = collect_residuals(model, texts, prepend_bos=prepend_bos)  # [L+1, N, d]
    with torch.no_grad():
        final_logits = final_norm_and_unembed(model, stack[-1])  # [N, V]
        vocab, subset_mass = _vocab_subset(final_logits, vocab_subset)
        target = final_logits[:, vocab].log_softmax(dim=-1)  # [N, V']
    n_layers, n_tokens = stack.shape[0] - 1, stack.shape[1]
    lens = TunedLens(n_layers, stack.shape[-1], rank=rank, seed=seed)
    W_U_sub = model.W_U[:, vocab]
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="training the tuned lens", disable=not progress):
        idx = torch.randint(n_tokens, (min(batch_tokens, n_tokens),), generator=generator)
        translated = lens(stack[:, idx])[:-1]  # [L, B, d]
        normed = model.ln_final(translated) if hasattr(model, "ln_final") else translated
        log_probs = (normed @ W_U_sub).log_softmax(dim=-1)
        tgt = target[idx]
        loss = (tgt.exp() * (tgt - log_probs)).sum(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lens.eval()
    lens.requires_grad_(False)
    lens.subset_mass = subset_mass
    return lens


def mean_kl_per_layer(model, texts, lens: TunedLens | None = None, *, prepend_bos: bool = PREPEND_BOS) -> Float[Tensor, "layer_plus_1"]:
    """KL(final || layer) in nats over the full vocabulary, averaged over every token of `texts`:
    the logit lens when `lens` is None, the tuned lens otherwise."""
    stack = collect_residuals(model, texts, prepend_bos=prepend_bos)
    with torch.no_grad():
        if lens is not None:
            stack = lens(stack)
        total = torch.zeros(stack.shape[0])
        for start in range(0, stack.shape[1], 64):  # chunks keep [layer, tokens, vocab] small (0.4 GB)
            log_probs = final_norm_and_unembed(model, stack[:, start : start + 64]).log_softmax(dim=-1)
            final = log_probs[-1:]
            total += (final.exp() * (final - log_probs)).sum(dim=-1).sum(dim=-1)
    return total / stack.shape[1]


def tuned_lens_logits(
    model, lens: TunedLens, prompt_or_tokens: str | Tensor, *, prepend_bos: bool = PREPEND_BOS
) -> Float[Tensor, "layer_plus_1 pos d_vocab"]:
    """Tuned-lens logits of one prompt: [n_layers + 1, pos, d_vocab], like `logit_lens`."""
    tokens = _single_prompt_tokens(model, prompt_or_tokens, prepend_bos)
    with torch.no_grad():
        stack = resid_stack(model, tokens)[:, 0]
        return final_norm_and_unembed(model, lens(stack))


def _fingerprint(model, texts, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps([list(texts), settings, model.cfg.n_layers, model.cfg.d_model]).encode())
    # A few weights identify the model itself.
    digest.update(model.W_U[:4, :64].numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_train_tuned_lens(model, texts, cache_file: Path | None = None, **settings) -> TunedLens:
    """Load translators cached for this model, corpus and settings; train and cache them if missing."""
    from course_lib.models.pretrained import cache_dir

    key = _fingerprint(model, texts, settings)
    path = Path(cache_file) if cache_file else cache_dir() / "tuned_lens" / f"{key}.pt"
    if path.exists():
        try:
            state = torch.load(path, weights_only=True)
            subset_mass = float(state.pop("subset_mass"))
            lens = TunedLens(model.cfg.n_layers, model.cfg.d_model, rank=settings.get("rank", DEFAULT_RANK))
            lens.load_state_dict(state)
            lens.subset_mass = subset_mass
            lens.requires_grad_(False)
            return lens
        except Exception:  # a partial or foreign file: train again
            path.unlink(missing_ok=True)
    start = time.perf_counter()
    with torch.enable_grad():
        lens = train_tuned_lens(model, texts, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save({**lens.state_dict(), "subset_mass": torch.tensor(lens.subset_mass)}, tmp)
    tmp.replace(path)
    print(f"trained the tuned lens in {time.perf_counter() - start:.0f} s; cached in {path}")
    return lens
