"""Results that are expensive and deterministic, cached beside the model (like the tuned lens).

`cached(name, key, compute)` returns compute()'s result, stored under the user cache directory
($COURSE_CACHE_DIR, see `course_lib.models.cache_dir`) by a hash of `key`. The key must name
everything the result depends on: the model (a fingerprint of its weights), the inputs, the
settings and the code's version. A missing, partial or unreadable file is computed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch


def model_fingerprint(model) -> str:
    """A short hash of a few weights and the shape of the model: changes when the model does."""
    digest = hashlib.sha256(json.dumps([model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads]).encode())
    digest.update(model.W_U[:4, :64].detach().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _digest(key: Any) -> str:
    def encode(value):
        if torch.is_tensor(value):
            return {"tensor": value.tolist(), "dtype": str(value.dtype)}
        raise TypeError(f"cannot put {type(value).__name__} in a cache key; use numbers, strings, lists or tensors.")

    return hashlib.sha256(json.dumps(key, default=encode, sort_keys=True).encode()).hexdigest()[:20]


def cached(name: str, key: Any, compute: Callable[[], Any], directory: Path | None = None) -> Any:
    """compute()'s result (anything torch.save can write), from the cache when `key` was seen before."""
    from course_lib.models.pretrained import cache_dir

    path = (directory or cache_dir() / "results") / f"{name}-{_digest(key)}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=False)
        except Exception:  # a partial or foreign file: compute again
            path.unlink(missing_ok=True)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(result, partial)
    partial.replace(path)
    return result
