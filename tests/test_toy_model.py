"""The shipped toy transformers: structure, exact residual-stream algebra, learned circuits."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.heads import induction_scores, per_token_loss, previous_token_scores, repeated_random_tokens
from course_lib.models.toy import AttnOnlyTransformer, ToyConfig, load_toy, load_toy_from_file
from course_lib.models.training import SKIP_TRIGRAMS, next_token_loss, skip_trigram_sequences, train_toy

HOOKS = [
    "hook_embed", "hook_pos_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.attn.hook_q",
    "blocks.{l}.attn.hook_k", "blocks.{l}.attn.hook_v", "blocks.{l}.attn.hook_attn_scores",
    "blocks.{l}.attn.hook_pattern", "blocks.{l}.attn.hook_z", "blocks.{l}.attn.hook_result",
    "blocks.{l}.hook_attn_out", "blocks.{l}.hook_resid_post",
]


def held_out_tokens(cfg: ToyConfig, n: int = 64, half: int = 20, seed: int = 9999):
    # Blocks of distinct tokens from the whole non-BOS vocabulary 1..63 (a fresh generator: the
    # training data comes from its own seeded generator, so these sequences are new).
    return repeated_random_tokens(n, half, cfg.d_vocab, cfg.bos_token_id, seed=seed)


def test_config_and_weight_shapes(toy2):
    cfg = toy2.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab, cfg.n_ctx) == (2, 4, 64, 16, 64, 48)
    assert toy2.W_E.shape == (64, 64) and toy2.W_pos.shape == (48, 64) and toy2.W_U.shape == (64, 64)
    assert toy2.W_Q.shape == toy2.W_K.shape == toy2.W_V.shape == (2, 4, 64, 16)
    assert toy2.W_O.shape == (2, 4, 16, 64)
    # Attention-only, bias-free, norm-free: these are all the parameters there are.
    n_params = sum(p.numel() for p in toy2.parameters())
    assert n_params == 64 * 64 + 48 * 64 + 64 * 64 + 2 * 4 * 4 * 64 * 16


def test_hook_names_and_shapes(toy2):
    tokens = held_out_tokens(toy2.cfg, n=3, half=5)
    _, cache = toy2.run_with_cache(tokens)
    for layer in range(2):
        for template in HOOKS:
            assert template.format(l=layer) in cache.keys()
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 4, 11, 11)  # [batch, head, query, key]
    assert cache["blocks.0.attn.hook_result"].shape == (3, 11, 4, 64)
    assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])  # TransformerLens shorthand
    pattern = cache["pattern", 0]
    assert torch.allclose(pattern.sum(-1), torch.ones(3, 4, 11), atol=1e-6)
    assert torch.all(pattern.triu(diagonal=1) == 0), "attention must be causal"


def test_residual_stream_is_a_sum_of_components(toy2):
    """Logits = (embed + pos_embed + every head's result) @ W_U, exactly."""
    tokens = held_out_tokens(toy2.cfg, n=4, half=8)
    logits, cache = toy2.run_with_cache(tokens)
    resid = cache["hook_embed"] + cache["hook_pos_embed"]
    for layer in range(toy2.cfg.n_layers):
        resid = resid + cache[f"blocks.{layer}.attn.hook_result"].sum(dim=2)
    torch.testing.assert_close(resid, cache["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(resid @ toy2.W_U, logits, atol=1e-4, rtol=1e-4)


def test_forward_matches_an_independent_implementation(toy1):
    """A hand-written forward pass from the weights gives the model's logits."""
    tokens = held_out_tokens(toy1.cfg, n=2, half=6)
    n = tokens.shape[1]
    x = toy1.W_E[tokens] + toy1.W_pos[:n]
    for layer in range(toy1.cfg.n_layers):
        out = torch.zeros_like(x)
        for h in range(toy1.cfg.n_heads):
            q = x @ toy1.W_Q[layer, h]
            k = x @ toy1.W_K[layer, h]
            v = x @ toy1.W_V[layer, h]
            scores = q @ k.transpose(-1, -2) / math.sqrt(toy1.cfg.d_head)
            scores = scores + torch.full((n, n), -1e9).triu(1)
            out = out + scores.softmax(-1) @ v @ toy1.W_O[layer, h]
        x = x + out
    torch.testing.assert_close(x @ toy1.W_U, toy1(tokens), atol=1e-4, rtol=1e-4)


def induction_behaviour(model) -> dict[str, float]:
    """What the shipped 2-layer model must do, on held-out repeated blocks of every length the
    context allows (2..23) with tokens from the whole vocabulary: the best previous-token score in
    layer 0, the best induction score in layer 1 (worst over lengths), the loss on the second copy
    (worst over lengths), and the same induction score on blocks that may repeat a token."""
    prev, induction, loss = [], [], []
    for half in (2, 3, 5, 8, 12, 16, 20, 23):
        tokens = held_out_tokens(model.cfg, n=48, half=half, seed=9000 + half)
        prev.append(float(previous_token_scores(model, tokens)[0].max()))
        induction.append(float(induction_scores(model, tokens)[1].max()))
        loss.append(float(per_token_loss(model, tokens)[:, half + 1 :].mean()))
    generator = torch.Generator().manual_seed(5)
    block = torch.randint(1, 64, (48, 20), generator=generator)  # with replacement: some tokens repeat
    with_repeats = torch.cat([torch.zeros(48, 1, dtype=torch.long), block, block], dim=1)
    return {"previous-token": min(prev), "induction": min(induction), "loss": max(loss),
            "induction, block of 20": induction[-2], "loss, block of 20": loss[-2],
            "induction, blocks with repeats": float(induction_scores(model, with_repeats)[1].max())}


def assert_does_induction(behaviour: dict[str, float]) -> None:
    """The bar every 2-layer model this code trains must clear (uniform guessing: loss log 63 = 4.1)."""
    assert behaviour["previous-token"] > 0.9, behaviour
    # Weakest on the shortest blocks (the head leaves some attention on BOS early in a sequence).
    assert behaviour["induction"] > 0.6 and behaviour["induction, block of 20"] > 0.85, behaviour
    assert behaviour["loss"] < 1.0 and behaviour["loss, block of 20"] < 0.15, behaviour
    assert behaviour["induction, blocks with repeats"] > 0.7, behaviour


def test_shipped_2l_does_induction_on_the_whole_vocabulary_and_every_length(toy2):
    assert_does_induction(induction_behaviour(toy2))
    tokens = held_out_tokens(toy2.cfg, n=32, half=20)
    assert induction_scores(toy2, tokens)[0].max() < 0.3, "layer 0 cannot do induction on its own"
    # One token from the low end of the vocabulary, where the old model failed, changes nothing.
    low_tokens = tokens.clone()
    low_tokens[:, [5, 25]] = 3
    assert induction_scores(toy2, low_tokens)[1].max() > 0.8


def test_shipped_2l_predicts_the_repeated_half(toy2):
    tokens = held_out_tokens(toy2.cfg)
    per_token = per_token_loss(toy2, tokens)  # loss predicting token t+1
    first_half, second_half = per_token[:, :20].mean(), per_token[:, 21:].mean()
    assert second_half < 0.1 * math.log(63)
    assert first_half > 0.7 * math.log(63)  # random tokens: near-uniform guessing


def skip_trigram_behaviour(model) -> dict[str, float]:
    """Next-token accuracy after B on held-out planted sequences, and the probability of the
    planted C after "A ... B" with and without A in the context."""
    from course_lib.circuits import skip_trigram_table

    tokens = skip_trigram_sequences(200, model.cfg, torch.Generator().manual_seed(777))
    with torch.no_grad():
        predicted = model(tokens).argmax(-1)[:, :-1]
    b_tokens = torch.tensor(sorted({b for _, b, _ in SKIP_TRIGRAMS}))
    at_b = torch.isin(tokens[:, :-1], b_tokens)
    table = skip_trigram_table(model, SKIP_TRIGRAMS, n=32)
    return {"accuracy": float((predicted[at_b] == tokens[:, 1:][at_b]).float().mean()),
            "p(C)": float(table["p(C)"].mean()), "p(C), no A": float(table["p(C), no A"].mean())}


def test_shipped_1l_learned_the_skip_trigrams(toy1):
    """After B, the 1-layer model predicts the C that the earlier A selects (a bigram cannot),
    wherever A sits in the context."""
    assert_does_skip_trigrams(skip_trigram_behaviour(toy1))


def assert_does_skip_trigrams(behaviour: dict[str, float]) -> None:
    """The bar every 1-layer model this code trains must clear."""
    assert behaviour["accuracy"] > 0.9, behaviour
    assert behaviour["p(C)"] > 0.5 and behaviour["p(C), no A"] < 0.1, behaviour


def test_skip_trigrams_form_a_ring():
    """Every A and every B is in exactly two planted triples, with different partners and outputs."""
    from collections import Counter

    assert len(SKIP_TRIGRAMS) == 12 and len({c for _, _, c in SKIP_TRIGRAMS}) == 12
    assert set(Counter(a for a, _, _ in SKIP_TRIGRAMS).values()) == {2}
    assert set(Counter(b for _, b, _ in SKIP_TRIGRAMS).values()) == {2}
    assert len({(a, b) for a, b, _ in SKIP_TRIGRAMS}) == 12


def test_training_is_deterministic_on_one_machine():
    """Two runs from the same seed give identical weights (here over a short run)."""
    first, second = train_toy("attn-only-2l", steps=25), train_toy("attn-only-2l", steps=25)
    for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), f"{key} differs between two runs"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attn-only-1l", "attn-only-2l"])
def test_retraining_reproduces_the_shipped_behaviour(name):
    """Retraining from the seed gives a model that clears the same behavioural bar as the shipped
    one. Neither weights nor exact scores are compared: float kernels differ between CPUs, and
    training amplifies the difference (on a second machine the worst-case loss of the 2-layer
    model, on blocks of 2, came out 0.34 against the shipped 0.69, both far below the bar of 1.0).
    A broken data generator or optimiser fails the bar: the old induction head scored 0.07 on
    whole-vocabulary blocks."""
    retrained = train_toy(name)
    if name == "attn-only-2l":
        assert_does_induction(induction_behaviour(retrained))
    else:
        assert_does_skip_trigrams(skip_trigram_behaviour(retrained))


def test_save_and_load_round_trip(tmp_path):
    from course_lib.models.toy import save_toy

    model = AttnOnlyTransformer(ToyConfig(n_layers=1, d_vocab=10, n_ctx=8, d_model=8, n_heads=2, d_head=4))
    save_toy(model, tmp_path / "m.safetensors")
    loaded = load_toy_from_file(tmp_path / "m.safetensors")
    assert loaded.cfg == model.cfg
    tokens = torch.tensor([[0, 3, 4, 5]])
    torch.testing.assert_close(loaded(tokens), model(tokens))


def test_training_loss_goes_down():
    model = train_toy("attn-only-2l", steps=0)
    from course_lib.models.training import TOY_TRAIN_CONFIGS, training_batch

    batch = training_batch(model.cfg, TOY_TRAIN_CONFIGS["attn-only-2l"], torch.Generator().manual_seed(3))
    untrained = next_token_loss(model(batch), batch).item()
    assert abs(untrained - math.log(64)) < 1.0  # near uniform before training
    with torch.no_grad():
        trained = next_token_loss(load_toy("attn-only-2l")(batch), batch).item()
    assert trained < 0.6 * untrained


@pytest.mark.parametrize(
    "tokens, message",
    [
        (torch.tensor([[0, 64]]), "token ids must lie in"),
        (torch.zeros(1, 49, dtype=torch.long), "exceeds the model's context"),
        (torch.zeros(1, 3), "integer ids"),
        ([0, 1, 2], "tensor of token ids"),
        (torch.zeros(1, 2, 3, dtype=torch.long), "shape [batch, pos]"),
    ],
)
def test_bad_tokens_give_clear_errors(toy2, tokens, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]")):
        toy2(tokens)


def test_unknown_toy_name():
    with pytest.raises(ValueError, match="attn-only-2l"):
        load_toy("attn-only-3l")
