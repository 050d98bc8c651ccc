"""Beyond one process and beyond RAM: the plumbing that takes sparsecraft onto existing engines.

* :mod:`~sparsecraft.distributed.group` -- the torch.distributed process group: rank, world,
  agreement checks that fail on every rank, sums in a fixed order;
* :mod:`~sparsecraft.distributed.calibration` -- data-parallel calibration for one-shot pruning
  (each rank a shard of the calibration windows, statistics summed per block);
* :mod:`~sparsecraft.distributed.shards`, :mod:`~sparsecraft.distributed.onload`,
  :mod:`~sparsecraft.distributed.spill`, :mod:`~sparsecraft.distributed.memory_budget` --
  sequential onloading: a model read one block at a time from its safetensors shards, the
  rest on the meta device, activations spilled to disk when they do not fit;
* :mod:`~sparsecraft.distributed.fsdp` -- masks on FSDP2 (``fully_shard``) parameter shards;
* :mod:`~sparsecraft.distributed.ray_tune` -- sweep grid points as Ray Tune trials.

User guide: docs/distributed.md.
"""
