"""Sequential onloading: a Hugging Face model whose weights stay on disk until a block needs them.

:class:`OnloadedModel` builds the model from its ``config.json`` with every parameter on the
``meta`` device (``accelerate.init_empty_weights``: no memory, buffers such as rotary
frequencies are real), then:

* :meth:`~OnloadedModel.materialize` reads the parameters under a module prefix (one decoder
  block, or the embeddings) from the safetensors shards (:class:`~sparsecraft.distributed.shards.ShardedCheckpoint`)
  in their stored dtype (bf16 / fp16 / fp32) onto a device (a GPU holds one block);
* :meth:`~OnloadedModel.release` puts them back on ``meta``, freeing the memory;
* :meth:`~OnloadedModel.checkpoint_name` maps a parameter name to its key in the checkpoint
  (models saved without the base-model prefix, e.g. GPT-2's ``h.0...`` for ``transformer.h.0...``).

So at any time the process holds the embeddings, one block and the calibration activations.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from sparsecraft.distributed.shards import ShardedCheckpoint
from sparsecraft.errors import MissingDependencyError, SparsecraftError


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mname, _, pname = name.rpartition(".")
    return (model.get_submodule(mname) if mname else model), pname


def _real_buffers(model: nn.Module) -> None:
    """Buffers computed at construction (rotary frequencies) are on ``meta`` too: rebuild the
    parameter-free modules that own them on the CPU from the model's config."""
    for name, module in list(model.named_modules()):
        if not any(b.device.type == "meta" for b in module.buffers(recurse=False)):
            continue
        if any(True for _ in module.parameters()):
            raise SparsecraftError(f"cannot onload {type(model).__name__}: module {name!r} has computed buffers and "
                                   "weights; load the model whole (offload='none')")
        try:
            fresh = type(module)(config=model.config)
        except TypeError as e:
            raise SparsecraftError(f"cannot onload {type(model).__name__}: cannot rebuild {name!r} ({e})") from None
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, fresh)


class OnloadedModel:
    """A model skeleton on ``meta`` whose parameters are read from disk on demand."""

    def __init__(self, folder: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        try:
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError:
            raise MissingDependencyError(
                "reading a model folder block by block needs transformers: pip install 'sparsecraft[hf]'"
            ) from None
        self.folder = Path(folder)
        self.ckpt = ShardedCheckpoint(self.folder)
        self.dtype = self.ckpt.float_dtype()
        self.device = torch.device(device)
        try:
            config = AutoConfig.from_pretrained(str(self.folder))
        except (OSError, ValueError) as e:
            raise SparsecraftError(f"cannot read the config of model folder {str(self.folder)!r}: {e}") from None
        with torch.device("meta"):  # no allocation at all (init_empty_weights allocates then moves)
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        _real_buffers(model)
        self.model = model.eval()
        self.prefix = getattr(model, "base_model_prefix", "") or ""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        self.names = {n: self._resolve(n) for n in params}
        missing = [n for n, c in self.names.items() if c is None and not self._tied(n)]
        if any(".experts." in n for n in missing):  # transformers stores fused experts one expert per tensor
            raise SparsecraftError(
                f"model folder {str(self.folder)!r} stores its fused experts weights ({missing[0]}) expert by "
                "expert, which sequential onloading does not read yet: load this MoE model whole (offload='none')"
            )
        if missing:
            raise SparsecraftError(
                f"model folder {str(self.folder)!r} does not hold {', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''} (the checkpoint does not match its config)"
            )

    def _resolve(self, name: str) -> str | None:
        if name in self.ckpt.file_of:
            return name
        if self.prefix and name.startswith(self.prefix + ".") and name[len(self.prefix) + 1 :] in self.ckpt.file_of:
            return name[len(self.prefix) + 1 :]
        return None

    def _tied(self, name: str) -> bool:
        """A parameter left out of the checkpoint because it is tied to another (lm_head)."""
        out = self.model.get_output_embeddings()
        return out is not None and name.endswith(".weight") and self.model.get_submodule(
            name.rpartition(".")[0]) is out and getattr(self.model.config, "tie_word_embeddings", False)

    def checkpoint_name(self, name: str) -> str | None:
        return self.names.get(name)

    def params_under(self, prefix: str) -> list[str]:
        """Parameter names of the module at ``prefix`` (``""`` = the whole model)."""
        p = prefix + "." if prefix else ""
        return [n for n in self.names if n.startswith(p)]

    def nbytes(self, names: list[str]) -> int:
        return self.ckpt.nbytes([c for n in names if (c := self.names.get(n)) is not None])

    def materialize(self, names: list[str], device: torch.device | str | None = None) -> None:
        """Read ``names`` from the checkpoint into the model (stored dtype, no gradients)."""
        keys = {n: c for n in names if (c := self.names.get(n)) is not None}
        loaded = self.ckpt.read(keys.values(), device or self.device)
        for n, c in keys.items():
            module, pname = _owner(self.model, n)
            module._parameters[pname] = nn.Parameter(loaded.pop(c), requires_grad=False)

    def release(self, names: list[str]) -> None:
        """Put ``names`` back on ``meta`` (their memory is freed once no one holds them)."""
        for n in names:
            module, pname = _owner(self.model, n)
            p = module._parameters.get(pname)
            if p is not None and p.device.type != "meta":
                module._parameters[pname] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
