"""Cached results: computed once per key, recomputed when the key or the file changes."""

from __future__ import annotations

import pytest
import torch

from course_lib.cache import cached, model_fingerprint


def test_computed_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.tensor([1.0, 2.0]), "n": len(calls)}

    key = ["model", torch.tensor([[1, 2, 3]]), (20, 50)]
    first = cached("demo", key, compute, directory=tmp_path)
    again = cached("demo", key, compute, directory=tmp_path)
    assert len(calls) == 1 and again["n"] == 1 and torch.equal(again["value"], first["value"])
    cached("demo", ["model", torch.tensor([[1, 2, 4]]), (20, 50)], compute, directory=tmp_path)
    assert len(calls) == 2  # other tokens, another entry


def test_a_broken_file_is_computed_again(tmp_path):
    cached("demo", [1], lambda: 1, directory=tmp_path)
    (path,) = tmp_path.glob("demo-*.pt")
    path.write_bytes(b"not a torch file")
    assert cached("demo", [1], lambda: 2, directory=tmp_path) == 2


def test_keys_must_be_plain_data(tmp_path):
    with pytest.raises(TypeError, match="cache key"):
        cached("demo", [object()], lambda: 1, directory=tmp_path)


def test_fingerprints_tell_models_apart(toy1, toy2):
    assert model_fingerprint(toy1) != model_fingerprint(toy2)
    assert model_fingerprint(toy2) == model_fingerprint(toy2)
