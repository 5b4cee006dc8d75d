"""Activation patching: clean/corrupted pairs, metrics, exact sweeps in both directions, and
attribution patching. TransformerLens's sweep functions are here under their own names
(`get_act_patch_resid_pre`, ...), so `import course_lib.patching as patching` is a drop-in.
"""

from course_lib.patching.attribution import activations_and_gradients, attribution_sweep
from course_lib.patching.drop_in import (
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_out_by_pos,
    get_act_patch_attn_out,
    get_act_patch_block_every,
    get_act_patch_mlp_out,
    get_act_patch_resid_pre,
)
from course_lib.patching.metrics import (
    accuracy_metric,
    log_prob_metric,
    logit_diff_metric,
    logit_metric,
    normalised,
    normalised_metric,
    prob_metric,
    rank_metric,
)
from course_lib.patching.pair import PatchingPair, make_pair
from course_lib.patching import sweeps
from course_lib.patching.sweeps import KINDS, one_location, sweep, sweep_block_every, window_sweep

__all__ = [
    "KINDS", "PatchingPair", "accuracy_metric", "activations_and_gradients", "attribution_sweep",
    "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_out",
    "get_act_patch_block_every", "get_act_patch_mlp_out", "get_act_patch_resid_pre", "log_prob_metric",
    "logit_diff_metric", "logit_metric", "make_pair", "normalised", "normalised_metric", "one_location",
    "prob_metric", "rank_metric", "sweep", "sweep_block_every", "sweeps", "window_sweep",
]
