"""Models of the course: the shipped toy transformers and the offline pretrained model."""

from course_lib.models.pretrained import DEFAULT_MODEL, ModelNotAvailableError, cache_dir, load_model
from course_lib.models.toy import TOY_MODEL_NAMES, AttnOnlyTransformer, ToyConfig, load_toy

__all__ = [
    "DEFAULT_MODEL",
    "TOY_MODEL_NAMES",
    "AttnOnlyTransformer",
    "ModelNotAvailableError",
    "ToyConfig",
    "cache_dir",
    "load_model",
    "load_toy",
]
