"""Calibration activations spilled to disk behave like the in-memory list."""

import torch

from sparsecraft.distributed.spill import SpilledInputs, activation_bytes
from sparsecraft.oneshot.blockwise import BlockInput


def test_spilled_inputs_round_trip_and_advance():
    inputs = [BlockInput(torch.randn(2, 3, 4).bfloat16(), (), {"mask": torch.ones(2)}) for _ in range(3)]
    assert activation_bytes(inputs) == 3 * 24 * 2
    store = SpilledInputs()
    for inp in inputs:
        store.append(BlockInput(inp.hidden.clone(), inp.args, inp.kwargs))
    assert len(store) == 3 and store.bytes_on_disk > 0
    for a, b in zip(store, inputs):
        assert torch.equal(a.hidden, b.hidden) and a.kwargs is b.kwargs
    store.advance(lambda inp: inp.hidden * 2)
    assert all(torch.equal(a.hidden, b.hidden * 2) for a, b in zip(store, inputs))
    folder = store.dir
    store.close()
    assert not folder.exists()
