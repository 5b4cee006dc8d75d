"""Indirect object identification (IOI) prompts, after Wang et al. 2022, for SmolLM2.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The name that appears
once is the indirect object (IO), the repeated one the subject (S). Orders, as in the paper:

* ABBA: "When [IO] and [S] went to the [PLACE], [S] gave a [OBJECT] to"
* BABA: "When [S] and [IO] went to the [PLACE], [S] gave a [OBJECT] to"

Every template here has the same shape, so with single-token names, places and objects every
prompt has the same length and the same positions: the two first names at 2 and 4, the second
S (S2) at 10 and the last token (END) at 14, counting the start token as position 0. One batch
then holds every template, and a patch at S2 or END means the same token in every prompt. (The
paper's 15 templates differ in length and are handled with per-prompt positions; fixing the
shape is a simplification made here so that the patching code stays position-by-position.)

Corrupted distributions for patching:

* "abc": the same prompts with three new, distinct names at IO, S1 and S2 (the paper's p_ABC):
  no name is repeated, so nothing says which name is the IO;
* "swap_s2": S2 replaced by the IO name, so the other name becomes the right answer (the logit
  difference changes sign).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

# One word per slot; every template: opener, name, "and", name, verb, preposition, "the", PLACE,
# ",", name, verb, "a", OBJECT, "to". All words are single tokens in SmolLM2's vocabulary.
TEMPLATES = (
    "When [A] and [B] went to the [PLACE], [C] gave a [OBJECT] to",
    "After [A] and [B] went to the [PLACE], [C] handed a [OBJECT] to",
    "While [A] and [B] were at the [PLACE], [C] passed a [OBJECT] to",
    "When [A] and [B] arrived at the [PLACE], [C] showed a [OBJECT] to",
    "Once [A] and [B] got to the [PLACE], [C] threw a [OBJECT] to",
    "As [A] and [B] walked into the [PLACE], [C] brought a [OBJECT] to",
)
NAMES = (
    "Mary John Alice Bob Sarah James Emma David Anna Paul Laura Mark Kate Tom Lisa Peter Rachel "
    "Daniel Julia Michael Jessica Andrew Amy Chris Helen George Lucy Jack Sophie Sam Claire Ben Rose "
    "Adam Grace Henry Ellen Max Eric Karen Steve Jane Carl Diana Frank Nancy Oscar Ruth Victor Amanda "
    "Kevin Maria Tim Linda Joe Susan Dan Nick Alex Jim Leo"
).split()
PLACES = "store park office garden school beach station market house hospital restaurant library kitchen church shop museum".split()
OBJECTS = "drink ball book ring bag letter snack gift key pen cake box phone bottle flower hat card toy basket note".split()

# Positions in the token sequence, start token at 0 (the same for every prompt).
POS_NAME1, POS_NAME2, POS_S2, POS_END = 2, 4, 10, 14
N_POSITIONS = 15
ORDERS = ("ABBA", "BABA")
CORRUPTIONS = ("abc", "swap_s2")


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt: its template, order and the names in its three name slots."""

    template: int
    order: str  # "ABBA" or "BABA"
    io: str  # the indirect object, the right answer (no leading space)
    s: str  # the subject
    place: str
    obj: str
    name1: str  # the names as they appear at positions 2, 4 and 10
    name2: str
    name3: str

    @property
    def text(self) -> str:
        return (
            TEMPLATES[self.template]
            .replace("[A]", self.name1).replace("[B]", self.name2).replace("[C]", self.name3)
            .replace("[PLACE]", self.place).replace("[OBJECT]", self.obj)
        )


@dataclass
class IOIDataset:
    """A batch of IOI prompts of one shape, tokenized, with the answer ids the metric needs."""

    prompts: list[IOIPrompt]
    tokens: Int[Tensor, "batch 15"]
    io_ids: Int[Tensor, " batch"]  # token id of " IO"
    s_ids: Int[Tensor, " batch"]  # token id of " S"
    io_pos: Int[Tensor, " batch"]  # position of the IO's first (only) mention: 2 (ABBA) or 4 (BABA)
    s1_pos: Int[Tensor, " batch"]  # position of the S's first mention: 4 (ABBA) or 2 (BABA)
    seed: int = 0
    kind: str = "ioi"  # "ioi", or the corruption that made it
    texts: list[str] = field(init=False)

    def __post_init__(self):
        self.texts = [p.text for p in self.prompts]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def s2_pos(self) -> int:
        return POS_S2

    @property
    def end_pos(self) -> int:
        return POS_END

    def position_labels(self) -> list[str]:
        """Names of the 15 positions, for plots: BOS, When, IO/S1, and, ..., S2, ..., END."""
        return ["BOS", "opener", "name1", "and", "name2", "verb", "prep", "the", "PLACE", ",",
                "S2", "verb", "a", "OBJECT", "END"]


def _token_id(model, word: str) -> int:
    ids = model.to_tokens(" " + word, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise ValueError(f"' {word}' is {len(ids)} tokens for this tokenizer; IOI prompts need single-token words.")
    return ids[0]


def _tokenize(model, prompts: list[IOIPrompt]) -> Int[Tensor, "batch 15"]:
    tokens = model.to_tokens([p.text for p in prompts], prepend_bos=True)
    if tokens.shape[1] != N_POSITIONS:
        lengths = {p.text: len(model.to_tokens(p.text, prepend_bos=True)[0]) for p in prompts}
        odd = next(text for text, n in lengths.items() if n != N_POSITIONS)
        raise ValueError(
            f"IOI prompts must be {N_POSITIONS} tokens with the start token; {odd!r} is {lengths[odd]}. "
            "Use single-token names, places and objects (see course_lib.data.ioi.NAMES)."
        )
    return tokens


def _dataset(model, prompts: list[IOIPrompt], seed: int, kind: str) -> IOIDataset:
    tokens = _tokenize(model, prompts)
    io_pos = torch.tensor([POS_NAME1 if p.order == "ABBA" else POS_NAME2 for p in prompts])
    return IOIDataset(
        prompts=prompts,
        tokens=tokens,
        io_ids=torch.tensor([_token_id(model, p.io) for p in prompts]),
        s_ids=torch.tensor([_token_id(model, p.s) for p in prompts]),
        io_pos=io_pos,
        s1_pos=POS_NAME1 + POS_NAME2 - io_pos,
        seed=seed,
        kind=kind,
    )


def ioi_dataset(model, n: int, *, seed: int = 0, orders: tuple[str, ...] = ORDERS,
                templates: tuple[int, ...] | None = None) -> IOIDataset:
    """`n` IOI prompts: templates, orders, names (two distinct), places and objects drawn with `seed`.

    Orders alternate (ABBA, BABA, ABBA, ...) and templates cycle, so each is equally represented.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise ValueError(f"orders must be a non-empty subset of {ORDERS}, got {orders}.")
    templates = tuple(range(len(TEMPLATES))) if templates is None else tuple(templates)
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        io, s = rng.sample(NAMES, 2)
        order = orders[i % len(orders)]
        name1, name2 = (io, s) if order == "ABBA" else (s, io)
        prompts.append(IOIPrompt(
            template=templates[(i // len(orders)) % len(templates)], order=order, io=io, s=s,
            place=rng.choice(PLACES), obj=rng.choice(OBJECTS), name1=name1, name2=name2, name3=s,
        ))
    return _dataset(model, prompts, seed, "ioi")


def corrupt(model, dataset: IOIDataset, kind: str, *, seed: int = 1) -> IOIDataset:
    """The corrupted twin of `dataset` (same templates, places and objects): see the module docstring.

    Its io_ids and s_ids are the *clean* dataset's, so a metric measures the clean answer on it.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}.")
    rng = random.Random(seed)
    prompts = []
    for p in dataset.prompts:
        if kind == "abc":
            a, b, c = rng.sample([name for name in NAMES if name not in (p.io, p.s)], 3)
            prompts.append(IOIPrompt(p.template, p.order, p.io, p.s, p.place, p.obj, a, b, c))
        else:  # swap_s2: the repeated name is now the IO
            prompts.append(IOIPrompt(p.template, p.order, p.io, p.s, p.place, p.obj, p.name1, p.name2, p.io))
    corrupted = _dataset(model, prompts, seed, kind)
    corrupted.io_ids, corrupted.s_ids = dataset.io_ids.clone(), dataset.s_ids.clone()
    corrupted.io_pos, corrupted.s1_pos = dataset.io_pos.clone(), dataset.s1_pos.clone()
    return corrupted
