"""Exact patching sweeps on SmolLM2: course_lib.patching against transformer_lens.patching, side by side.

One prompt pair of 10 tokens (with the start token), so a layer x position sweep has 30 x 10
locations. For every sweep kind, each implementation runs in its own fresh process (so its peak
memory can be read), the two results are compared, and the speed-up is the ratio of the two times.
TransformerLens's head-by-position sweep (2700 forward passes, ~10 min) is timed on 270 locations
and scaled by 10; the table says so. Attribution patching (all locations at once, approximate) is
timed beside them.

    .venv/bin/python benchmarks/patching_sweeps.py        # prints a Markdown table
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import resource
import time

CLEAN = "The Colosseum is in downtown, near"
CORRUPTED = "The Space Needle is in downtown, near"
KINDS = {
    "resid_pre": "get_act_patch_resid_pre",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "head_out_all_pos": "get_act_patch_attn_head_out_all_pos",
    "head_out_by_pos": "get_act_patch_attn_head_out_by_pos",
}
TL_SUBSET = 270  # locations TransformerLens runs for the head-by-position sweep


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(kind: str, implementation: str, queue) -> None:
    import pandas as pd
    import torch
    import transformer_lens.patching as tl_patching

    import course_lib.patching as patching
    from course_lib.models import load_model

    torch.set_num_threads(2)
    model = load_model()
    clean, corrupted = (model.to_tokens(p, prepend_bos=True) for p in (CLEAN, CORRUPTED))
    assert clean.shape == corrupted.shape == (1, 10), (clean.shape, corrupted.shape)
    metric = patching.logit_diff_metric(model.to_single_token(" Rome"), model.to_single_token(" Seattle"))
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        model(corrupted)  # warm-up
    scale = 1.0
    before = _rss_mb()
    start = time.perf_counter()
    if implementation == "course_lib":
        result = getattr(patching, KINDS[kind])(model, corrupted, cache, metric)
        if kind == "head_out_by_pos":
            result = result.flatten()[:TL_SUBSET]
    elif implementation == "attribution":
        result = patching.attribution_sweep(model, corrupted, cache, kind, metric)
    elif kind == "head_out_by_pos":
        rows = [(l, p, h) for l in range(30) for p in range(10) for h in range(9)][:TL_SUBSET]
        with torch.no_grad():
            result = tl_patching.generic_activation_patch(
                model, corrupted, cache, metric, tl_patching.layer_pos_head_vector_patch_setter, "z",
                index_df=pd.DataFrame(rows, columns=["layer", "pos", "head"]))
        scale = 2700 / TL_SUBSET
    else:
        with torch.no_grad():
            result = getattr(tl_patching, KINDS[kind])(model, corrupted, cache, metric)
    seconds = (time.perf_counter() - start) * scale
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    # Plain lists: a tensor sent through a queue lives in the child's shared memory, gone when it exits.
    queue.put((seconds, max(peak, 0.0), result.detach().flatten().tolist()))


def measure(kind: str, implementation: str):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_measure, args=(kind, implementation, queue))
    process.start()
    while True:
        try:
            out = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the measurement of {kind} with {implementation} died (exit code {process.exitcode}).")
    process.join()
    return out


def main() -> None:
    lines = ["| sweep (SmolLM2, 30 layers x 10 positions) | TransformerLens | course_lib | speed-up | max abs difference | peak memory (TL / course_lib) | attribution patching |",
             "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        tl_s, tl_mb, tl_out = measure(kind, "transformer_lens")
        ours_s, ours_mb, ours_out = measure(kind, "course_lib")
        atp_s, _, _ = measure(kind, "attribution")
        diff = max(abs(a - b) for a, b in zip(ours_out, tl_out))
        note = f" (timed on {TL_SUBSET} of 2700, x10)" if kind == "head_out_by_pos" else ""
        lines.append(f"| {kind} | {tl_s:.1f} s{note} | {ours_s:.2f} s | {tl_s / ours_s:.0f}x | {diff:.1e} | {tl_mb:.0f} / {ours_mb:.0f} MB | {atp_s:.2f} s |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
