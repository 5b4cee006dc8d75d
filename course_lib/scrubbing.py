"""Causal scrubbing (Chan et al. 2022) of induction in the 2-layer attention-only toy model.

A hypothesis says which parts of the model's computation matter and what they depend on. Causal
scrubbing tests it by resampling: every activation the hypothesis calls irrelevant is recomputed
on another input from the data distribution, and every activation it says depends only on some
feature is recomputed on another input that agrees with the true one on that feature. If the
hypothesis is right, the scrubbed model does as well as the real one.

    loss recovered = (loss(scrambled) - loss(scrubbed)) / (loss(scrambled) - loss(model))

1 means the hypothesis explains everything; 0 means it does no better than scrambling every input
it is about. As in Redwood's induction experiment ("Causal scrubbing: results on induction heads",
Chan et al. 2022: naive hypothesis 35%, refined 89%), the hypothesis is about the layer-1 heads:
everything that does not flow through them (the embeddings and layer-0 heads straight to the
logits) runs on the true input, and "scrambled" resamples every input of those heads.

What a layer-1 head reads. With no layer norm, the query, key and value inputs of a layer-1 head
at position p are sums of terms, each computed from the tokens:

    resid(p) = W_E[token(p)] + W_pos[p] + sum over layer-0 heads j of L0Hj(tokens)[p]

`W_pos[p]` is the same for every input, so it is always kept. A hypothesis gives, for each input
(q, k, v) of each layer-1 head it names, a `Rule` for each term ("embed", "L0H0", ...):

* `None`: computed on the true input (the hypothesis claims everything about it);
* `()`: computed on a fresh input from the distribution (it does not matter): the default;
* `(-1,)`, `(0,)`, `(-1, 0)`, ...: at each position p, computed on a fresh input that agrees with
  the true one at positions p-1, p, ...: "this term at p depends only on these tokens".

Terms of one input that have the same rule are one node of the hypothesis and share one resampled
input; different heads and inputs draw independently (the treeified model of the paper). Layer-1
heads the hypothesis does not name run on the true input.

The data: BOS followed by a random block of 4..16 tokens repeated to the end (as in training), and
the loss is the next-token cross-entropy where the next token repeats an earlier one (p >= block
length). Resampled inputs come from the same distribution conditioned on the tokens they must
share: a random block length, random block tokens, then the required tokens written into the block
slots they fall in (so the resample is again a repeated sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

Rule = tuple[int, ...] | None
Hypothesis = dict[str, dict[str, dict[str, Rule]]]  # head "L1H{h}" -> input "q"/"k"/"v" -> term -> rule
INPUTS = ("q", "k", "v")
BLOCK_LENGTHS = (4, 16)


@dataclass(frozen=True)
class ScrubResult:
    """Next-token loss of the model, of the scrubbed model and of the scrambled baseline."""

    model: float
    scrubbed: float
    scrambled: float

    @property
    def loss_recovered(self) -> float:
        """(scrambled - scrubbed) / (scrambled - model): 1 = the hypothesis explains all of it."""
        return loss_recovered(self.model, self.scrubbed, self.scrambled)


def loss_recovered(loss_model: float, loss_scrubbed: float, loss_scrambled: float) -> float:
    """Share of the loss gap between scrambled inputs and the real model that the hypothesis keeps."""
    if loss_scrambled == loss_model:
        raise ValueError("the scrambled loss equals the model's loss: nothing to recover, the ratio is undefined.")
    return (loss_scrambled - loss_scrubbed) / (loss_scrambled - loss_model)


# ----------------------------------------------------------------------------------- the data


def repeated_tokens(
    n: int, n_ctx: int, d_vocab: int, generator: torch.Generator, lengths: tuple[int, int] = BLOCK_LENGTHS
) -> tuple[Int[Tensor, "n n_ctx"], Int[Tensor, "n"]]:
    """(tokens, block lengths): BOS 0, then a random block of tokens 1..d_vocab-1 repeated to n_ctx."""
    blocks, block_len = _random_blocks(n, n_ctx, d_vocab, generator, lengths)
    return _fill(blocks, block_len, n_ctx), block_len


def _random_blocks(n: int, n_ctx: int, d_vocab: int, generator: torch.Generator, lengths: tuple[int, int]):
    """Block lengths [n] and block tokens [n, n_ctx] (only the first block_len of a row are read)."""
    block_len = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=generator)
    return torch.randint(1, d_vocab, (n, n_ctx), generator=generator), block_len


def _fill(blocks: Tensor, block_len: Tensor, n_ctx: int) -> Tensor:
    """tokens[i, 0] = 0 and tokens[i, j] = blocks[i, (j - 1) mod block_len[i]] for j >= 1."""
    slots = (torch.arange(n_ctx) - 1)[None, :] % block_len[:, None]
    tokens = blocks.gather(1, slots)
    tokens[:, 0] = 0
    return tokens


def resample_agreeing(
    tokens: Int[Tensor, "n pos"], keep: Bool[Tensor, "n pos"], d_vocab: int, generator: torch.Generator,
    lengths: tuple[int, int] = BLOCK_LENGTHS, max_tries: int = 1000,
) -> Int[Tensor, "n pos"]:
    """A fresh repeated sequence per row that has the same tokens as `tokens` wherever `keep` is True."""
    n, n_ctx = tokens.shape
    out = torch.empty_like(tokens)
    todo = torch.arange(n)
    for _ in range(max_tries):
        blocks, block_len = _random_blocks(len(todo), n_ctx, d_vocab, generator, lengths)
        # Write each required token into the block slot its position reads.
        slots = (torch.arange(n_ctx) - 1)[None, :] % block_len[:, None]
        row_keep = keep[todo] & (torch.arange(n_ctx) > 0)
        rows, cols = row_keep.nonzero(as_tuple=True)
        blocks[rows, slots[rows, cols]] = tokens[todo][rows, cols]
        candidate = _fill(blocks, block_len, n_ctx)
        # Two kept positions in one slot with different tokens cannot both hold: draw those rows again.
        ok = ((candidate == tokens[todo]) | ~keep[todo]).all(dim=1)
        out[todo[ok]] = candidate[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            return out
    raise RuntimeError(f"{len(todo)} rows found no repeated sequence agreeing on the kept positions in {max_tries} tries.")


def predictable_positions(block_len: Int[Tensor, "n"], n_ctx: int) -> Bool[Tensor, "n n_ctx_minus_1"]:
    """Positions p whose next token repeats an earlier one (p >= block length): where induction helps."""
    return torch.arange(n_ctx - 1)[None, :] >= block_len[:, None]


# ----------------------------------------------------------------------------------- the model


def _check_model(model) -> None:
    if model.cfg.n_layers != 2 or any(hasattr(b, "ln1") for b in model.blocks) or any(hasattr(b, "mlp") for b in model.blocks):
        raise ValueError("causal scrubbing here is written for the 2-layer attention-only toy model (load_toy('attn-only-2l')).")


def term_names(model) -> list[str]:
    """The input-dependent terms of a layer-1 head's input: 'embed' and each layer-0 head."""
    return ["embed"] + [f"L0H{j}" for j in range(model.cfg.n_heads)]


def _terms(
    model, tokens: Int[Tensor, "n pos"], at: Int[Tensor, "n n_at"] | None = None
) -> dict[str, Float[Tensor, "n n_at d_model"]]:
    """Each term of the layer-1 residual stream on `tokens` (position embedding left out), read at
    positions `at` of each row (default: every position). Layer 0 is computed only where it is read."""
    n, n_ctx = tokens.shape
    at = torch.arange(n_ctx).expand(n, n_ctx) if at is None else at
    n_heads, n_at = model.cfg.n_heads, at.shape[1]
    tokens_at = tokens.gather(1, at)  # [n, n_at]
    W_E, W_pos = model.W_E, model.W_pos[:n_ctx]

    # Layer 0 reads W_E[token] + W_pos[position], and its query, key and value are linear in that:
    # each is a table per token plus a table per position. A scrub runs thousands of resampled rows,
    # so keys and values are never built per row: a query is scored against every token and every
    # position once, and each key's score is looked up (the same numbers, ~8x faster on a CPU).
    def per_token_and_position(W: Tensor) -> tuple[Tensor, Tensor]:  # [d_vocab, head, d_head], [pos, head, d_head]
        return torch.einsum("vm,hmd->vhd", W_E, W), torch.einsum("pm,hmd->phd", W_pos, W)

    (q_token, q_position), (k_token, k_position), (v_token, v_position) = (
        per_token_and_position(W[0]) for W in (model.W_Q, model.W_K, model.W_V))
    q = q_token[tokens_at] + q_position[at]  # [n, n_at, head, d_head]
    score_of_token = torch.einsum("nahd,vhd->nhav", q, k_token)  # [n, head, n_at, d_vocab]
    score_of_position = torch.einsum("nahd,phd->nhap", q, k_position)  # [n, head, n_at, pos]
    key_tokens = tokens[:, None, None, :].expand(n, n_heads, n_at, n_ctx)
    scores = (score_of_token.gather(-1, key_tokens) + score_of_position) / math.sqrt(model.cfg.d_head)
    future = torch.arange(n_ctx)[None, None, :] > at[:, :, None]  # [n, n_at, pos]
    pattern = scores.masked_fill(future[:, None], float("-inf")).softmax(dim=-1)  # [n, head, n_at, pos]
    # The value read is the attention on each token times its value, plus on each position times its value.
    attention_on_token = torch.zeros(n, n_heads, n_at, model.cfg.d_vocab).scatter_add_(-1, key_tokens, pattern)
    z = torch.einsum("nhav,vhd->nahd", attention_on_token, v_token) + torch.einsum("nhap,phd->nahd", pattern, v_position)
    result = torch.einsum("nahd,hdm->nham", z, model.W_O[0])
    terms = {"embed": W_E[tokens_at]}
    terms.update({f"L0H{j}": result[:, j] for j in range(n_heads)})
    return terms


def _node_value(
    model, tokens: Tensor, names: list[str], rule: Rule, true_terms: dict[str, Tensor], generator: torch.Generator
) -> Float[Tensor, "n pos d_model"]:
    """The sum of terms `names` as one hypothesis node with `rule` (see the module docstring)."""
    if rule is None:
        return sum(true_terms[name] for name in names)
    n, n_ctx = tokens.shape
    if rule == ():
        fresh = resample_agreeing(tokens, torch.zeros_like(tokens, dtype=torch.bool), model.cfg.d_vocab, generator)
        terms = _terms(model, fresh)
        return sum(terms[name] for name in names)
    # Per position p: a resample agreeing at p + offset, run whole, and read at p.
    p = torch.arange(n_ctx)
    keep = torch.zeros(n, n_ctx, n_ctx, dtype=torch.bool)  # [row, p, position that must agree]
    for offset in rule:
        valid = (p + offset >= 0) & (p + offset < n_ctx)
        keep[:, p[valid], (p + offset)[valid]] = True
    fresh = resample_agreeing(
        tokens[:, None, :].expand(n, n_ctx, n_ctx).reshape(n * n_ctx, n_ctx), keep.reshape(n * n_ctx, n_ctx),
        model.cfg.d_vocab, generator,
    )
    terms = _terms(model, fresh, at=p.repeat(n)[:, None])  # the resample made for p, read at p
    return sum(terms[name] for name in names).reshape(n, n_ctx, -1)


def _head_output(model, head: int, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Float[Tensor, "n pos d_model"]:
    """Layer-1 head `head` applied to separate query, key and value inputs (residual-stream vectors)."""
    q = q_in @ model.W_Q[1, head]
    k = k_in @ model.W_K[1, head]
    v = v_in @ model.W_V[1, head]
    scores = q @ k.transpose(-1, -2) / math.sqrt(model.cfg.d_head)
    n_ctx = q.shape[1]
    causal = torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    return pattern @ v @ model.W_O[1, head]


def _check_hypothesis(model, hypothesis: Hypothesis) -> None:
    heads = {f"L1H{h}" for h in range(model.cfg.n_heads)}
    terms = set(term_names(model))
    for head, inputs in hypothesis.items():
        if head not in heads:
            raise ValueError(f"{head!r} is not a layer-1 head; the hypothesis names heads {sorted(heads)}.")
        for which, rules in inputs.items():
            if which not in INPUTS:
                raise ValueError(f"{head}: input {which!r} is not one of {INPUTS}.")
            for term, rule in rules.items():
                if term not in terms:
                    raise ValueError(f"{head}.{which}: term {term!r} is not one of {sorted(terms)}.")
                if rule is not None and not (isinstance(rule, tuple) and all(isinstance(o, int) for o in rule)):
                    raise ValueError(f"{head}.{which}.{term}: a rule is None, () or a tuple of offsets like (-1, 0); got {rule!r}.")


def scrubbed_logits(
    model, tokens: Int[Tensor, "n pos"], hypothesis: Hypothesis, generator: torch.Generator
) -> Float[Tensor, "n pos d_vocab"]:
    """The toy model's logits with every layer-1 head named in `hypothesis` scrubbed by its rules."""
    _check_model(model)
    _check_hypothesis(model, hypothesis)
    with torch.no_grad():
        true_terms = _terms(model, tokens)
        pos = model.W_pos[: tokens.shape[1]]
        resid = pos + sum(true_terms.values())  # the true layer-1 input
        out = resid.clone()
        for head in range(model.cfg.n_heads):
            rules = hypothesis.get(f"L1H{head}")
            if rules is None:  # not part of the hypothesis: runs on the true input
                out = out + _head_output(model, head, resid, resid, resid)
                continue
            inputs = {}
            for which in INPUTS:
                by_rule: dict[Rule, list[str]] = {}
                for term in term_names(model):
                    by_rule.setdefault(rules.get(which, {}).get(term, ()), []).append(term)
                inputs[which] = pos + sum(
                    _node_value(model, tokens, names, rule, true_terms, generator) for rule, names in by_rule.items()
                )
            out = out + _head_output(model, head, inputs["q"], inputs["k"], inputs["v"])
        return out @ model.W_U


def scrambled_hypothesis(model, heads: list[int]) -> Hypothesis:
    """The baseline: every input of the given layer-1 heads resampled."""
    return {f"L1H{h}": {which: {} for which in INPUTS} for h in heads}


def predictable_loss(logits: Tensor, tokens: Tensor, block_len: Tensor) -> float:
    """Mean next-token cross-entropy over the predictable positions (p >= block length)."""
    mask = predictable_positions(block_len, tokens.shape[1])
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return float(losses[mask.flatten()].mean())


def scrub(
    model, hypothesis: Hypothesis, n: int = 200, seed: int = 0
) -> ScrubResult:
    """Loss of the model, of the scrubbed model and of the scrambled baseline on n repeated sequences."""
    generator = torch.Generator().manual_seed(seed)
    tokens, block_len = repeated_tokens(n, model.cfg.n_ctx, model.cfg.d_vocab, generator)
    heads = [int(name[3:]) for name in hypothesis]
    with torch.no_grad():
        loss_model = predictable_loss(model(tokens), tokens, block_len)
    scrubbed = predictable_loss(scrubbed_logits(model, tokens, hypothesis, generator), tokens, block_len)
    scrambled = predictable_loss(
        scrubbed_logits(model, tokens, scrambled_hypothesis(model, heads), generator), tokens, block_len
    )
    return ScrubResult(model=loss_model, scrubbed=scrubbed, scrambled=scrambled)
