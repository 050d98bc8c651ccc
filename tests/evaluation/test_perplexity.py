import math

import pytest
import torch

from sparsecraft.evaluation.perplexity import perplexity

from ..oneshot.tiny import calib_ids, tiny_llama


def test_perplexity_equals_direct_computation():
    model = tiny_llama(seed=3)
    windows = calib_ids(5, 12, seed=4)
    total, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model(input_ids=w[None]).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            for t in range(len(w) - 1):
                total -= float(logp[t, w[t + 1]])
                n += 1
    direct = math.exp(total / n)
    for bs in (1, 2, 5):
        assert perplexity(model, windows, batch_size=bs, progress=False) == pytest.approx(direct, rel=1e-5)


def test_perplexity_rejects_bad_windows():
    with pytest.raises(ValueError):
        perplexity(tiny_llama(), torch.zeros(4, dtype=torch.long), progress=False)
