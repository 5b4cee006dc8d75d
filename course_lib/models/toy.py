"""An attention-only toy transformer built on TransformerLens hook points.

Decoder-only, no biases, no layer norm, no MLPs: the residual stream is the sum of the token
embedding, the positional embedding and every head's output, which is what makes the circuits
of Elhage et al. (2021) exact. Hook names follow TransformerLens so code written against the toy
model also runs on a `TransformerBridge`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of an attention-only toy transformer (names as in TransformerLens)."""

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    d_vocab: int = 64
    n_ctx: int = 48
    bos_token_id: int = 0

    @property
    def device(self) -> str:
        """Toy models live on the CPU (TransformerLens's patching functions read cfg.device)."""
        return "cpu"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ToyConfig":
        return cls(**json.loads(text))


class Attention(nn.Module):
    """Causal multi-head attention without biases; every step is exposed by a hook point."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        shape_in = (cfg.n_heads, cfg.d_model, cfg.d_head)
        self.W_Q = nn.Parameter(torch.empty(shape_in))
        self.W_K = nn.Parameter(torch.empty(shape_in))
        self.W_V = nn.Parameter(torch.empty(shape_in))
        self.W_O = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head, cfg.d_model))
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]: each head's output

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        q = self.hook_q(torch.einsum("bpm,hmd->bphd", resid, self.W_Q))
        k = self.hook_k(torch.einsum("bpm,hmd->bphd", resid, self.W_K))
        v = self.hook_v(torch.einsum("bpm,hmd->bphd", resid, self.W_V))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        n_pos = resid.shape[1]
        future = torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool, device=resid.device), diagonal=1)
        # -inf (not a large negative number) so future keys get exactly zero weight.
        scores = self.hook_attn_scores(scores.masked_fill(future, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))
        return result.sum(dim=2)


class AttnOnlyBlock(nn.Module):
    """One residual block: resid_post = resid_pre + attention(resid_pre)."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(resid))
        return self.hook_resid_post(resid + attn_out)


class AttnOnlyTransformer(HookedRootModule):
    """Attention-only decoder: embed + positional embed, `n_layers` attention blocks, unembed."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([AttnOnlyBlock(cfg) for _ in range(cfg.n_layers)])
        self.init_weights(torch.Generator().manual_seed(0))
        self.setup()

    def init_weights(self, generator: torch.Generator) -> None:
        """Normal init with std 1/sqrt(fan_in), drawn from `generator` in a fixed order."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                fan_in = param.shape[-2] if param.ndim >= 2 else param.shape[-1]
                if name in ("W_E", "W_pos"):
                    fan_in = self.cfg.d_model  # embeddings: unit-ish norm rows
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits for each position. `tokens` must be a 2-D LongTensor within vocab and n_ctx."""
        tokens = self._validate_tokens(tokens)
        n_pos = tokens.shape[1]
        # F.embedding (not W_E[tokens]) keeps training bit-reproducible across thread counts.
        embed = self.hook_embed(F.embedding(tokens, self.W_E))
        pos_embed = self.hook_pos_embed(self.W_pos[:n_pos].unsqueeze(0).expand_as(embed))
        resid = embed + pos_embed
        for block in self.blocks:
            resid = block(resid)
        return resid @ self.W_U

    def run_with_cache(self, *args, **kwargs) -> tuple[Tensor, ActivationCache]:
        """Like TransformerLens: returns (logits, ActivationCache), so `cache["pattern", 0]` works."""
        logits, cache_dict = super().run_with_cache(*args, **kwargs)
        return logits, ActivationCache(cache_dict, self)

    def _validate_tokens(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor):
            raise TypeError(
                f"The toy model takes a tensor of token ids, got {type(tokens).__name__}. "
                "It has no tokenizer: build tokens with torch.tensor([[0, 5, 7, ...]])."
            )
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}.")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be integer ids (torch.long), got dtype {tokens.dtype}.")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds the model's context n_ctx={self.cfg.n_ctx}."
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.d_vocab}); got min {int(tokens.min())}, "
                f"max {int(tokens.max())}."
            )
        return tokens.long()

    # Per-layer weight stacks, as in HookedTransformer: [n_layers, n_heads, ...].
    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([b.attn.W_Q for b in self.blocks])

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([b.attn.W_K for b in self.blocks])

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([b.attn.W_V for b in self.blocks])

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return torch.stack([b.attn.W_O for b in self.blocks])


CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
TOY_MODEL_NAMES = ("attn-only-1l", "attn-only-2l")


def save_toy(model: AttnOnlyTransformer, path: Path) -> None:
    """Write weights and config to one safetensors file (config in its metadata)."""
    from safetensors.torch import save_file

    tensors = {name: p.detach().contiguous() for name, p in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": model.cfg.to_json()})


def load_toy_from_file(path: Path) -> AttnOnlyTransformer:
    """Load a toy model saved by `save_toy`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        cfg = ToyConfig.from_json(f.metadata()["config"])
        state = {name: f.get_tensor(name) for name in f.keys()}
    model = AttnOnlyTransformer(cfg)
    model.load_state_dict(state)
    model.eval()
    return model


def load_toy(name: str = "attn-only-2l") -> AttnOnlyTransformer:
    """Load a shipped toy checkpoint: "attn-only-1l" or "attn-only-2l"."""
    if name not in TOY_MODEL_NAMES:
        raise ValueError(f"Unknown toy model {name!r}. Choose one of {list(TOY_MODEL_NAMES)}.")
    path = CHECKPOINT_DIR / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"The checkpoint {path} is missing from the installed package. Rebuild it with "
            f"`course train-toy {name}` or reinstall the course package."
        )
    return load_toy_from_file(path)
