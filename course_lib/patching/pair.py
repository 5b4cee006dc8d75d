"""A clean/corrupted prompt pair for activation patching, checked before anything runs.

Patching swaps activations position by position, so both prompts must have the same number of
tokens, and the metrics compare two single-token answers. `PatchingPair` refuses anything else
with an error that shows both tokenizations, so the fix is visible at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from course_lib.tokens import single_token_id, to_tokens


@dataclass(frozen=True)
class PatchingPair:
    """Clean and corrupted prompts (same token length) with their single-token answers."""

    clean_prompt: str
    corrupted_prompt: str
    clean_answer: str
    corrupted_answer: str
    clean_tokens: Int[Tensor, "1 pos"]
    corrupted_tokens: Int[Tensor, "1 pos"]
    clean_answer_id: int
    corrupted_answer_id: int
    str_tokens: list[str]
    prepend_bos: bool

    @property
    def n_pos(self) -> int:
        return int(self.clean_tokens.shape[1])

    def position_labels(self, model) -> list[str]:
        """'clean / corrupted' token labels for each position (one string where they agree)."""
        clean = model.to_str_tokens(self.clean_tokens[0])
        corrupted = model.to_str_tokens(self.corrupted_tokens[0])
        return [a if a == b else f"{a}/{b}" for a, b in zip(clean, corrupted)]


def _show(model, tokens: Tensor) -> str:
    return str(model.to_str_tokens(tokens[0]))


def make_pair(
    model,
    clean_prompt: str,
    corrupted_prompt: str,
    clean_answer: str,
    corrupted_answer: str,
    *,
    prepend_bos: bool,
) -> PatchingPair:
    """Tokenize and check a clean/corrupted pair; `prepend_bos` is explicit (course default True)."""
    for name, value in (("clean_prompt", clean_prompt), ("corrupted_prompt", corrupted_prompt)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
    clean = to_tokens(model, clean_prompt, prepend_bos=prepend_bos)
    corrupted = to_tokens(model, corrupted_prompt, prepend_bos=prepend_bos)
    if clean.shape != corrupted.shape:
        raise ValueError(
            "clean and corrupted prompts must have the same number of tokens, so that position p "
            f"means the same slot in both:\n  clean     ({clean.shape[1]}): {_show(model, clean)}\n"
            f"  corrupted ({corrupted.shape[1]}): {_show(model, corrupted)}\n"
            "Choose a corrupted subject with as many tokens as the clean one."
        )
    ids = []
    for role, answer in (("clean", clean_answer), ("corrupted", corrupted_answer)):
        try:
            ids.append(single_token_id(model, answer))
        except (ValueError, TypeError) as err:
            raise ValueError(f"the {role} answer must be one token: {err}") from None
    if ids[0] == ids[1]:
        raise ValueError(f"the clean and corrupted answers are the same token {clean_answer!r}; a logit difference between them is always 0.")
    if torch.equal(clean, corrupted):
        raise ValueError("the clean and corrupted prompts tokenize identically: there is nothing to patch.")
    return PatchingPair(
        clean_prompt, corrupted_prompt, clean_answer, corrupted_answer, clean, corrupted,
        ids[0], ids[1], model.to_str_tokens(clean[0]), prepend_bos,
    )
