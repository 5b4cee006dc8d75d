"""The shipped toy transformers: structure, exact residual-stream algebra, learned circuits."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.heads import induction_scores, previous_token_scores, repeated_random_tokens
from course_lib.models.toy import AttnOnlyTransformer, ToyConfig, load_toy, load_toy_from_file
from course_lib.models.training import SKIP_TRIGRAMS, next_token_loss, skip_trigram_sequences, train_toy

HOOKS = [
    "hook_embed", "hook_pos_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.attn.hook_q",
    "blocks.{l}.attn.hook_k", "blocks.{l}.attn.hook_v", "blocks.{l}.attn.hook_attn_scores",
    "blocks.{l}.attn.hook_pattern", "blocks.{l}.attn.hook_z", "blocks.{l}.attn.hook_result",
    "blocks.{l}.hook_attn_out", "blocks.{l}.hook_resid_post",
]


def held_out_tokens(cfg: ToyConfig, n: int = 64, half: int = 20):
    # Seed never used in training; tokens drawn from the range the repeated data uses.
    return repeated_random_tokens(n, half, cfg.d_vocab, cfg.bos_token_id, seed=9999, low=21)


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


def test_shipped_2l_has_previous_token_and_induction_heads(toy2):
    tokens = held_out_tokens(toy2.cfg)
    prev = previous_token_scores(toy2, tokens)
    induction = induction_scores(toy2, tokens)
    assert prev[0].max() > 0.8, f"no previous-token head in layer 0: {prev[0]}"
    assert induction[1].max() > 0.8, f"no induction head in layer 1: {induction[1]}"
    # Chance level is 1 / (number of visible keys), far below.
    assert induction[0].max() < 0.3, "layer 0 cannot do induction on its own"


def test_shipped_2l_predicts_the_repeated_half(toy2):
    tokens = held_out_tokens(toy2.cfg)
    with torch.no_grad():
        log_probs = toy2(tokens).log_softmax(-1)
    per_token = -log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # loss predicting token t+1
    first_half, second_half = per_token[:, :20].mean(), per_token[:, 21:].mean()
    assert second_half < 0.2 * math.log(toy2.cfg.d_vocab)
    assert first_half > 0.8 * math.log(43)  # random tokens: near-uniform over the 43 in use


def test_shipped_1l_learned_the_skip_trigrams(toy1):
    """After B, the 1-layer model predicts the C that the earlier A selects (a bigram cannot)."""
    tokens = skip_trigram_sequences(200, toy1.cfg, torch.Generator().manual_seed(777))
    with torch.no_grad():
        predicted = toy1(tokens).argmax(-1)[:, :-1]
    b_tokens = torch.tensor(sorted({b for _, b, _ in SKIP_TRIGRAMS}))
    at_b = torch.isin(tokens[:, :-1], b_tokens)
    accuracy = (predicted[at_b] == tokens[:, 1:][at_b]).float().mean()
    assert accuracy > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attn-only-1l", "attn-only-2l"])
def test_training_reproduces_the_shipped_checkpoint(name, tmp_path):
    """Retraining from the seed (on one thread) gives the shipped weights bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_toy(name)
    finally:
        torch.set_num_threads(threads)
    shipped = load_toy(name)
    for (key, a), (_, b) in zip(model.state_dict().items(), shipped.state_dict().items()):
        assert torch.equal(a, b), f"{name}: {key} differs from the shipped checkpoint"


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
