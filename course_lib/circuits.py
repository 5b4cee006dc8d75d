"""Circuits of attention-only transformers (Elhage et al. 2021, "A Mathematical Framework").

With no MLPs and no layer norm, the logits are a sum of paths through the heads, and each head is
two low-rank bilinear maps: the QK circuit (where to attend) and the OV circuit (what to write).
Everything here works on the course's toy models (`course_lib.models.toy`); vocab-by-vocab
matrices are formed only for them.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import FactoredMatrix


# ----------------------------------------------------------------- forward pass from the weights


def attn_only_forward(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
    """The toy model's logits computed directly from its weights (no hooks, no modules)."""
    n_pos = tokens.shape[1]
    resid = model.W_E[tokens] + model.W_pos[:n_pos]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    for layer in range(model.cfg.n_layers):
        q = torch.einsum("bpm,hmd->bhpd", resid, model.W_Q[layer])
        k = torch.einsum("bpm,hmd->bhpd", resid, model.W_K[layer])
        v = torch.einsum("bpm,hmd->bhpd", resid, model.W_V[layer])
        scores = q @ k.transpose(-1, -2) / math.sqrt(model.cfg.d_head)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        z = pattern @ v  # [batch, head, pos, d_head]
        resid = resid + torch.einsum("bhpd,hdm->bpm", z, model.W_O[layer])
    return resid @ model.W_U


# ----------------------------------------------------------------- the residual stream as a sum


def logit_decomposition(model, tokens: Int[Tensor, "1 pos"]) -> tuple[Float[Tensor, "term pos d_vocab"], list[str]]:
    """Split the logits of one sequence into paths, returning (terms, labels); terms sum to the logits.

    Terms: "direct" (embeddings straight to W_U), "L{l}H{h}" (head reading the embeddings), and for
    layer >= 1 "L{l}H{h}<-L{k}H{j}" (head reading the output of an earlier head: a virtual head).
    Attention patterns are those of the actual forward pass (held fixed), which makes the sum exact.
    """
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"logit_decomposition takes one sequence, shape [1, pos]; got {tuple(tokens.shape)}.")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        embed = (cache["hook_embed"] + cache["hook_pos_embed"])[0]  # [pos, d_model]
        # sources: vectors in the residual stream, each tagged by the path that wrote it
        sources: list[tuple[str, Tensor]] = [("direct", embed)]
        for layer in range(model.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [head, q, k]
            new_sources = []
            for head in range(model.cfg.n_heads):
                W_OV = model.W_V[layer, head] @ model.W_O[layer, head]
                for label, vectors in sources:
                    out = pattern[head] @ (vectors @ W_OV)  # [pos, d_model]
                    name = f"L{layer}H{head}" if label == "direct" else f"L{layer}H{head}<-{label}"
                    new_sources.append((name, out))
            sources += new_sources
        labels = [label for label, _ in sources]
        terms = torch.stack([vectors @ model.W_U for _, vectors in sources])
    return terms, labels


# ----------------------------------------------------------------- QK and OV circuits


def ov_circuit(model, layer: int, head: int) -> FactoredMatrix:
    """W_V W_O of one head, [d_model, d_model], rank <= d_head."""
    return FactoredMatrix(model.W_V[layer, head], model.W_O[layer, head])


def qk_circuit(model, layer: int, head: int) -> FactoredMatrix:
    """W_Q W_K^T of one head, [d_model, d_model], rank <= d_head (query side on the left)."""
    return FactoredMatrix(model.W_Q[layer, head], model.W_K[layer, head].T)


def full_ov_circuit(model, layer: int, head: int) -> FactoredMatrix:
    """W_E W_V W_O W_U: how attending to token a changes the logit of token b, [d_vocab, d_vocab]."""
    return model.W_E @ ov_circuit(model, layer, head) @ model.W_U


def full_qk_circuit(model, layer: int, head: int) -> FactoredMatrix:
    """W_E W_Q W_K^T W_E^T: how much query token a attends to key token b (token part only)."""
    return model.W_E @ qk_circuit(model, layer, head) @ model.W_E.T


def positional_qk(model, layer: int, head: int) -> Float[Tensor, "n_ctx n_ctx"]:
    """The positional part of a head's attention scores, W_pos W_Q W_K^T W_pos^T / sqrt(d_head)
    [query position, key position], with future keys masked to -inf. Exact for layer 0 (its input
    is W_E[token] + W_pos[position]); it leaves out the token terms and their cross terms."""
    scores = model.W_pos @ model.W_Q[layer, head] @ model.W_K[layer, head].T @ model.W_pos.T / math.sqrt(model.cfg.d_head)
    future = torch.ones_like(scores, dtype=torch.bool).triu(diagonal=1)
    return scores.masked_fill(future, float("-inf"))


def favourite_offsets(model, layer: int, head: int) -> Int[Tensor, "n_ctx_minus_1"]:
    """For every query position q >= 1: q minus the key position the positional QK circuit scores
    highest (1 means "the previous token")."""
    scores = positional_qk(model, layer, head)[1:]
    return torch.arange(1, scores.shape[0] + 1) - scores.argmax(dim=-1)


def copying_scores(model, layer: int) -> dict[str, Float[Tensor, "head"]]:
    """Per head of `layer`: share of the full OV circuit's eigenvalue mass with positive real part,
    sum(Re(eig)) / sum(|eig|) (the paper's copying score, in [-1, 1]), and the share of tokens whose
    largest OV output is themselves ("token maps to itself" top-1 accuracy)."""
    shares, ratios, top1 = [], [], []
    for head in range(model.cfg.n_heads):
        circuit = full_ov_circuit(model, layer, head)
        eig = circuit.eigenvalues
        shares.append((eig.real > 0).float().mean())
        ratios.append(eig.real.sum() / eig.abs().sum())
        full = circuit.AB
        top1.append((full.argmax(dim=-1) == torch.arange(full.shape[0])).float().mean())
    return {"positive_eigenvalue_share": torch.stack(shares), "eigenvalue_ratio": torch.stack(ratios), "self_top1": torch.stack(top1)}


def top_skip_trigrams(model, head: int, k: int = 10, layer: int = 0) -> list[tuple[int, int, int, float]]:
    """The k strongest skip-trigrams "A ... B -> C" of a head, as (A, B, C, score).

    B (the current token) attends to A by the full QK circuit, and A's value raises C by the full
    OV circuit: score = QK[B, A] + OV[A, C] on standardised circuits, so both parts must be large.
    The best source A for each B is its top QK key; the best C is A's top OV output.
    """
    with torch.no_grad():
        qk = full_qk_circuit(model, layer, head).AB  # [query token B, key token A]
        ov = full_ov_circuit(model, layer, head).AB  # [source token A, output token C]
        qk = (qk - qk.mean()) / qk.std()
        ov = (ov - ov.mean()) / ov.std()
        best_c_score, best_c = ov.max(dim=-1)  # per A
        total = qk + best_c_score[None, :]  # [B, A]
        # Skip the start token as a source (attending to it is "no information") and as the
        # current token (at position 0 it can only attend to itself).
        total[:, model.cfg.bos_token_id] = float("-inf")
        total[model.cfg.bos_token_id, :] = float("-inf")
        flat = total.flatten().topk(k)
        result = []
        for score, index in zip(flat.values, flat.indices):
            b, a = divmod(int(index), total.shape[1])
            result.append((a, b, int(best_c[a]), float(score)))
    return result


def skip_trigram_contexts(
    model, a: int | None, b: int, n: int = 64, length: int = 24, max_gap: int = 8, seed: int = 0, filler_low: int = 25
) -> Int[Tensor, "n length"]:
    """n sequences [BOS, filler..., A, filler..., B] ending in B, with A 1..max_gap positions
    before B as in the training data (no A at all when `a` is None); filler from [filler_low, d_vocab)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(filler_low, model.cfg.d_vocab, (n, length), generator=generator)
    tokens[:, 0] = model.cfg.bos_token_id
    tokens[:, -1] = b
    gaps = torch.randint(1, max_gap + 1, (n,), generator=generator)
    if a is not None:
        tokens[torch.arange(n), length - 1 - gaps] = a
    return tokens


def skip_trigram_table(model, triples, n: int = 64, seed: int = 0) -> pd.DataFrame:
    """For each planted (A, B, C): the mean next-token probability after "A ... B" of C, of A's
    other output (the OV "bug": A's other triple has a different B), of B's other output (what B
    alone suggests), and of the other planted outputs on average; and, without A in the context,
    of C."""
    rows = []
    outputs = sorted({c for _, _, c in triples})
    for a, b, c in triples:
        other_of_a = [cc for aa, bb, cc in triples if aa == a and cc != c]
        other_of_b = [cc for aa, bb, cc in triples if bb == b and cc != c]
        unrelated = [cc for cc in outputs if cc not in (c, *other_of_a, *other_of_b)]
        with torch.no_grad():
            probs = model(skip_trigram_contexts(model, a, b, n, seed=seed))[:, -1].softmax(dim=-1)
            without_a = model(skip_trigram_contexts(model, None, b, n, seed=seed))[:, -1].softmax(dim=-1)
        rows.append({
            "A": a, "B": b, "C": c,
            "p(C)": float(probs[:, c].mean()),
            "p(A's other C)": float(probs[:, other_of_a].mean()),
            "p(B's other C)": float(probs[:, other_of_b].mean()),
            "p(unrelated C)": float(probs[:, unrelated].mean()),
            "p(C), no A": float(without_a[:, c].mean()),
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------- composition between layers


def composition_score(left: Float[Tensor, "d_model d_model"], right: Float[Tensor, "d_model d_model"]) -> float:
    """||left @ right||_F / (||left||_F ||right||_F), the paper's composition score (0 for a zero matrix)."""
    denominator = left.norm() * right.norm()
    return float((left @ right).norm() / denominator) if denominator > 0 else 0.0


def composition_scores(model, kind: str) -> Float[Tensor, "head0 head1"]:
    """Q-, K- or V-composition of every layer-0 head (writer) into every layer-1 head (reader).

    Q: W_OV^0 feeds the queries of W_QK^1; K: it feeds the keys; V: it feeds W_OV^1.
    """
    if model.cfg.n_layers < 2:
        raise ValueError("composition needs at least two layers (use attn-only-2l).")
    scores = torch.zeros(model.cfg.n_heads, model.cfg.n_heads)
    for h0 in range(model.cfg.n_heads):
        W_OV0 = ov_circuit(model, 0, h0).AB
        for h1 in range(model.cfg.n_heads):
            W_QK1 = qk_circuit(model, 1, h1).AB
            W_OV1 = ov_circuit(model, 1, h1).AB
            if kind == "q":
                scores[h0, h1] = composition_score(W_OV0, W_QK1)
            elif kind == "k":
                scores[h0, h1] = composition_score(W_QK1, W_OV0.T)
            elif kind == "v":
                scores[h0, h1] = composition_score(W_OV0, W_OV1)
            else:
                raise ValueError(f"kind must be 'q', 'k' or 'v', got {kind!r}.")
    return scores


def random_composition_baseline(d_model: int, d_head: int, n_samples: int = 200, seed: int = 0) -> float:
    """Mean composition score of random rank-d_head matrices: the level that means "no composition"."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_samples):
        a = torch.randn(d_model, d_head, generator=generator) @ torch.randn(d_head, d_model, generator=generator)
        b = torch.randn(d_model, d_head, generator=generator) @ torch.randn(d_head, d_model, generator=generator)
        total += composition_score(a, b)
    return total / n_samples


def virtual_k_circuit_diagonal(model, writer_head: int, reader_head: int) -> float:
    """How well a layer-1 head's keys match "the previous token was my query token".

    M[a, b] = W_E[a] W_Q W_K^T (W_E[b] W_OV^writer)^T scores query token a against a key position
    whose layer-0 head `writer_head` copied token b into it. For an induction head fed by a
    previous-token head, each row peaks on the diagonal (a == b). Returns the share of rows whose
    argmax is on the diagonal (chance: 1 / d_vocab).
    """
    with torch.no_grad():
        queries = model.W_E @ model.W_Q[1, reader_head]  # [vocab, d_head]
        keys = model.W_E @ ov_circuit(model, 0, writer_head).AB @ model.W_K[1, reader_head]  # [vocab, d_head]
        m = queries @ keys.T
        return float((m.argmax(dim=-1) == torch.arange(m.shape[0])).float().mean())


def loss_with_head_ablated(model, tokens: Int[Tensor, "batch pos"], layer: int | None = None, head: int | None = None) -> float:
    """Mean next-token loss on the second half of repeated sequences, with one head's output zeroed
    (or none, when layer/head are None)."""

    def zero_head(result, hook):
        result[:, :, head] = 0.0
        return result

    hooks = [] if layer is None else [(f"blocks.{layer}.attn.hook_result", zero_head)]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    half = (tokens.shape[1] - 1) // 2
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    per_token = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    return float(per_token[:, half + 1 :].mean())


def best_skip_trigram(model, head: int, b: int, layer: int = 0) -> tuple[int, int]:
    """For current token `b`: the source token A the head attends to most (full QK, start token
    excluded) and the token C that attending to A raises most (full OV). Returns (A, C)."""
    with torch.no_grad():
        qk_row = full_qk_circuit(model, layer, head).AB[b].clone()
        qk_row[model.cfg.bos_token_id] = float("-inf")
        a = int(qk_row.argmax())
        c = int(full_ov_circuit(model, layer, head).AB[a].argmax())
    return a, c
