"""Built-in model sources (no hub): ``smollm2-135m``, ``all-minilm-l6-v2``, or a local HF dir."""

from sparsecraft.models.loader import LoadedModel, load_model
from sparsecraft.models.sources import BUILTIN_MODELS, cache_dir, resolve_model_dir

__all__ = ["BUILTIN_MODELS", "LoadedModel", "cache_dir", "load_model", "resolve_model_dir"]
