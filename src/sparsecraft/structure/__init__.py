"""From zeros to a smaller dense model: structure removal driven by a traced dependency graph.

* :func:`trace` -- the :class:`DependencyGraph` of a model (channel groups, attention head groups,
  frozen spaces with the reason), from one forward pass;
* :func:`prune_structure` -- score and remove MLP / conv channels, attention heads (grouped-query
  aware) or whole blocks (depth pruning); :func:`remove_channels`, :func:`remove_heads`,
  :func:`remove_blocks` and :func:`remove_masked` do the removal alone;
* :func:`save_pretrained` / :func:`load_pretrained` -- Hugging Face directories whose config
  describes the smaller model (natively when it can, otherwise a record that sparsecraft reads).

SliceGPT (rotate, then slice the hidden dimension) is the one-shot method ``slicegpt``
(:mod:`sparsecraft.structure.slicegpt`). See docs/structure.md.
"""

from sparsecraft.structure.api import StructureReport, count_params, prune_structure
from sparsecraft.structure.depth import block_influence, remove_blocks
from sparsecraft.structure.from_masks import remove_masked
from sparsecraft.structure.graph import ChannelGroup, DependencyGraph, HeadGroup, trace
from sparsecraft.structure.hf import load_pretrained, save_pretrained, sync_config
from sparsecraft.structure.remove import Change, remove_channels, remove_heads

__all__ = [
    "Change",
    "ChannelGroup",
    "DependencyGraph",
    "HeadGroup",
    "StructureReport",
    "block_influence",
    "count_params",
    "load_pretrained",
    "prune_structure",
    "remove_blocks",
    "remove_channels",
    "remove_heads",
    "remove_masked",
    "save_pretrained",
    "sync_config",
    "trace",
]
