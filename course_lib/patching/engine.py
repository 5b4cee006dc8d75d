"""Rerun only what a patch can change: the fast engine behind the patching sweeps.

A patch at layer l and position p changes nothing before layer l and, through causal attention,
nothing at positions before p. So a patched run can start from the unpatched ("base") run's
activations: keep its keys and values for positions < p, and recompute positions p.. from layer l
on. Many patches go through the network together as one batch; a patch joins the batch at the
sub-layer where it starts ("staggered" batching), so no patch pays for layers it does not need.

`LlamaStack` does this for Llama-family models (SmolLM2: RMSNorm, rotary positions, grouped-query
attention, a gated MLP) from the Hugging Face weights under a `TransformerBridge`, with the same
operations as `transformers`' eager code. Sub-layer j is the attention of layer j // 2 when j is
even and its MLP when j is odd; sub-layer 2 * n_layers is the unembedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def _weight(module) -> Tensor:
    """The weight of a Linear or RMSNorm, unwrapped from a TransformerLens bridge component."""
    module = getattr(module, "original_component", None) or getattr(module, "_original_component", None) or module
    return module.weight.detach()


@dataclass
class BaseRun:
    """Every activation of one unpatched run that a patched rerun may start from."""

    tokens: Int[Tensor, "batch pos"]
    resid_pre: list[Float[Tensor, "batch pos d_model"]]  # one per layer, plus resid_post of the last
    resid_mid: list[Float[Tensor, "batch pos d_model"]]
    keys: list[Float[Tensor, "batch pos kv_head d_head"]]  # after the rotary embedding
    values: list[Float[Tensor, "batch pos kv_head d_head"]]
    z: list[Float[Tensor, "batch pos head d_head"]]
    logits: Float[Tensor, "batch pos d_vocab"]


@dataclass
class Entry:
    """A patched run waiting to start: its residual stream at positions start.. entering sub-layer j."""

    sublayer: int
    start: int
    resid: Float[Tensor, "batch suffix d_model"]


class LlamaStack:
    """A Llama-family model's weights as plain tensors, able to rerun any suffix of a forward pass."""

    def __init__(self, hf_model):
        cfg = hf_model.config
        inner = hf_model.model
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.scale = self.d_head**-0.5
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                {
                    "ln1": _weight(layer.input_layernorm),
                    "W_Q": _weight(attn.q_proj),
                    "W_K": _weight(attn.k_proj),
                    "W_V": _weight(attn.v_proj),
                    "W_O": _weight(attn.o_proj),
                    "ln2": _weight(layer.post_attention_layernorm),
                    "W_gate": _weight(mlp.gate_proj),
                    "W_in": _weight(mlp.up_proj),
                    "W_out": _weight(mlp.down_proj),
                }
            )
        self.ln_final = _weight(inner.norm)
        self.W_U = _weight(hf_model.lm_head)
        self.embed = _weight(inner.embed_tokens)
        rotary = inner.rotary_emb
        self.rotary = getattr(rotary, "original_component", None) or getattr(rotary, "_original_component", None) or rotary
        self._cos_sin: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def supports(model) -> bool:
        """True for an unprocessed TransformerBridge over a bias-free Llama-style model."""
        if getattr(model, "compatibility_mode", False):
            return False  # processed (folded, centred) weights: leave it to the hook path
        if any(hook_point.fwd_hooks for hook_point in getattr(model, "hook_dict", {}).values()):
            return False  # hooks the user attached must act in every patched run: the hook path runs them
        hf = getattr(model, "original_model", None)
        try:
            layer = hf.model.layers[0]
            cfg = hf.config
            ok = cfg.model_type in ("llama", "mistral") and getattr(cfg, "hidden_act", "silu") == "silu"
            ok = ok and all(getattr(getattr(layer.self_attn, n), "bias", None) is None for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
            ok = ok and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            return bool(ok) and getattr(cfg, "sliding_window", None) is None
        except AttributeError:
            return False

    # ----- the pieces of a forward pass, on a suffix of positions -------------------------------
    def rms(self, x: Tensor, weight: Tensor) -> Tensor:
        """RMSNorm as transformers computes it (in float32, weight applied last)."""
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + self.eps))

    def cos_sin(self, n_pos: int) -> tuple[Tensor, Tensor]:
        """Rotary cos and sin tables for positions 0..n_pos-1, each [n_pos, d_head]."""
        if self._cos_sin is None or self._cos_sin[0].shape[0] < n_pos:
            positions = torch.arange(max(n_pos, 64))[None]
            cos, sin = self.rotary(self.ln_final[None, None, :], positions)
            self._cos_sin = (cos[0], sin[0])
        return self._cos_sin[0][:n_pos], self._cos_sin[1][:n_pos]

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Apply the rotary embedding to x [batch, pos, head, d_head] (cos/sin [pos, d_head])."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos[:, None] + rotated * sin[:, None]

    def qkv(self, layer: int, resid: Tensor, start: int):
        """Rotated queries [b, s, head, d_head], keys and values [b, s, kv_head, d_head]."""
        w = self.layers[layer]
        b, s, _ = resid.shape
        normed = self.rms(resid, w["ln1"])
        q = F.linear(normed, w["W_Q"]).view(b, s, self.n_heads, self.d_head)
        k = F.linear(normed, w["W_K"]).view(b, s, self.n_kv_heads, self.d_head)
        v = F.linear(normed, w["W_V"]).view(b, s, self.n_kv_heads, self.d_head)
        cos, sin = self.cos_sin(start + s)
        return self._rotate(q, cos[start:], sin[start:]), self._rotate(k, cos[start:], sin[start:]), v

    def attend(self, q: Tensor, keys: Tensor, values: Tensor, start: int) -> Float[Tensor, "b s head d_head"]:
        """z for queries at positions start.. over keys/values at positions 0..; causal."""
        b, s, _, d = q.shape
        n = keys.shape[1]
        group = self.n_heads // self.n_kv_heads  # query head h reads key/value head h // group
        q = q.view(b, s, self.n_kv_heads, group, d).permute(0, 2, 3, 1, 4)  # b kv g s d
        k = keys.permute(0, 2, 1, 3)[:, :, None]  # b kv 1 n d
        v = values.permute(0, 2, 1, 3)[:, :, None]
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        future = torch.arange(n)[None, :] > torch.arange(start, start + s)[:, None]
        pattern = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        z = torch.matmul(pattern, v)  # b kv g s d
        return z.permute(0, 3, 1, 2, 4).reshape(b, s, self.n_heads, d)

    def attn_out(self, layer: int, z: Tensor) -> Float[Tensor, "b s d_model"]:
        """The attention sub-layer's output from every head's z."""
        return F.linear(z.flatten(-2), self.layers[layer]["W_O"])

    def mlp_out(self, layer: int, resid: Tensor) -> Float[Tensor, "b s d_model"]:
        """The gated MLP's output: W_out (silu(W_gate x) * W_in x) with x the normed residual."""
        w = self.layers[layer]
        normed = self.rms(resid, w["ln2"])
        return F.linear(F.silu(F.linear(normed, w["W_gate"])) * F.linear(normed, w["W_in"]), w["W_out"])

    def unembed(self, resid: Tensor) -> Tensor:
        """Final norm and unembedding."""
        return F.linear(self.rms(resid, self.ln_final), self.W_U)

    # ----- whole runs ----------------------------------------------------------------------------
    @torch.no_grad()
    def base_run(self, tokens: Int[Tensor, "batch pos"]) -> BaseRun:
        """One full forward pass that keeps every activation a rerun may need."""
        resid = F.embedding(tokens, self.embed)
        run = BaseRun(tokens, [], [], [], [], [], None)
        for layer in range(self.n_layers):
            run.resid_pre.append(resid)
            q, k, v = self.qkv(layer, resid, 0)
            z = self.attend(q, k, v, 0)
            resid = resid + self.attn_out(layer, z)
            run.keys.append(k)
            run.values.append(v)
            run.z.append(z)
            run.resid_mid.append(resid)
            resid = resid + self.mlp_out(layer, resid)
        run.resid_pre.append(resid)  # resid_post of the last layer
        run.logits = self.unembed(resid)
        return run

    @torch.no_grad()
    def rerun(self, run: BaseRun, entries: list[Entry], last_position_only: bool) -> Tensor:
        """Finish every entry's forward pass together; all entries share one start position.

        Returns logits [n_entries, batch, suffix or 1, d_vocab] in the order of `entries`.
        """
        start = entries[0].start
        if any(e.start != start for e in entries):
            raise ValueError("rerun takes entries with one shared start position.")
        order = sorted(range(len(entries)), key=lambda i: entries[i].sublayer)
        n_batch = run.tokens.shape[0]
        x = None
        joined = 0
        first = entries[order[0]].sublayer
        for j in range(first, 2 * self.n_layers + 1):
            while joined < len(order) and entries[order[joined]].sublayer == j:
                joining = entries[order[joined]].resid
                x = joining if x is None else torch.cat([x, joining])
                joined += 1
            if j == 2 * self.n_layers:
                break
            layer = j // 2
            if j % 2 == 0:
                q, k, v = self.qkv(layer, x, start)
                copies = x.shape[0] // n_batch
                keys = torch.cat([run.keys[layer][:, :start].repeat(copies, 1, 1, 1), k], dim=1)
                values = torch.cat([run.values[layer][:, :start].repeat(copies, 1, 1, 1), v], dim=1)
                x = x + self.attn_out(layer, self.attend(q, keys, values, start))
            else:
                x = x + self.mlp_out(layer, x)
        logits = self.unembed(x[:, -1:] if last_position_only else x)
        logits = logits.view(len(entries), n_batch, *logits.shape[1:])
        # Undo the sort: entries joined in sub-layer order.
        unsorted = torch.empty_like(logits)
        unsorted[torch.tensor(order)] = logits
        return unsorted
