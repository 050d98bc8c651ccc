"""SliceGPT: PCA rule against numpy, computational invariance, widths and parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.structure import count_params
from sparsecraft.structure.slicegpt import pca, sliced_width

from .models import HF_MAKERS, calib_ids, tiny_llama


def test_pca_matches_numpy_eigendecomposition_with_one_percent_damping():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 4, generator=g) * torch.tensor([3.0, 1.0, 0.5, 2.0]) for _ in range(3)]
    X = np.concatenate([x.numpy().reshape(-1, 4) for x in xs]).astype(np.float64)
    H = X.T @ X
    H += 0.01 * np.mean(np.diag(H)) * np.eye(4)
    w, v = np.linalg.eigh(H)
    order = np.argsort(-w)
    vals, vecs = pca(xs)
    assert np.allclose(vals.numpy(), w[order])
    assert np.allclose(np.abs(vecs.numpy()), np.abs(v[:, order]))  # eigenvectors up to sign


def test_width_rounds_down_like_the_reference():
    # SmolLM2's 576: int((1 - s) * 576) rounded down to a multiple of 8
    assert [sliced_width(576, s) for s in (0.10, 0.20, 0.25, 0.30)] == [512, 456, 432, 400]
    assert sliced_width(576, 0.10, round_to=1) == 518


def _tied_llama():
    model = tiny_llama(layers=3)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    return model


@pytest.mark.parametrize("embeddings", ["keep", "slice"])
@pytest.mark.parametrize("make", [_tied_llama, HF_MAKERS["qwen2"], HF_MAKERS["mistral"]])
def test_rotation_without_slicing_keeps_the_outputs(embeddings, make):
    """Computational invariance (Sec. 3.1): folded norms + orthogonal rotations change nothing."""
    model = make()
    ids = calib_ids(4, 12)
    before = model(ids).logits
    sparsecraft.prune(model, 0.0, method="slicegpt", calib=ids, embeddings=embeddings, progress=False)
    assert torch.allclose(model(ids).logits, before, atol=1e-4)


def test_parameter_counts_of_both_layouts():
    ids = calib_ids(4, 12)
    d, v, layers, qkv, mlp = 32, 64, 3, 32 + 16 + 16, 64  # tiny_llama: q 32, k 16, v 16 outputs; MLP 64
    base = _tied_llama()
    dense = count_params(base)
    keep = sparsecraft.prune(base, 0.25, method="slicegpt", calib=ids, progress=False).info["structure"]
    w = 24
    # per block: q/k/v read d_in, o writes w, gate/up read w, down writes d_out, shortcuts d_in x w and w x d_out
    block = lambda d_in, d_out: qkv * d_in + 32 * w + 2 * mlp * w + mlp * d_out + d_in * w + w * d_out  # noqa: E731
    norms_gone = layers * 2 * d
    assert keep["width"] == w and keep["layers"] == [[32, 24, 24], [24, 24, 24], [24, 24, 32]]
    removed = norms_gone + layers * (qkv * d + 32 * d + 3 * mlp * d)
    expected = dense - removed + block(32, 24) + block(24, 24) + block(24, 32)
    assert keep["params_after"] == expected
    ref = sparsecraft.prune(_tied_llama(), 0.25, method="slicegpt", calib=ids, embeddings="slice",
                            progress=False).info["structure"]
    # reference layout: the embedding is sliced to w, the head is untied (v x d), the final norm scale is folded
    assert ref["layers"] == [[24, 24, 24], [24, 24, 24], [24, 24, 32]]
    assert ref["params_after"] == (dense - v * d - d - norms_gone - layers * (qkv * d + 32 * d + 3 * mlp * d)
                                   + v * w + v * d + block(24, 24) * 2 + block(24, 32))


def test_slicing_keeps_the_function_better_than_dropping_coordinates():
    """The PCA basis keeps the dominant directions: sliced by PCA, the logits move less than
    when the same width is kept in the original coordinates (no rotation)."""
    model = _tied_llama()
    ids = calib_ids(8, 16)
    dense = model(ids).logits
    sparsecraft.prune(model, 0.25, method="slicegpt", calib=ids, round_to=1, progress=False)
    err_pca = (model(ids).logits - dense).pow(2).mean()
    naive = _tied_llama()
    with torch.no_grad():
        for layer in naive.model.layers:  # zero the last quarter of every block's residual contribution
            layer.self_attn.o_proj.weight[24:] = 0
            layer.mlp.down_proj.weight[24:] = 0
    err_naive = (naive(ids).logits - dense).pow(2).mean()
    assert err_pca < err_naive


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 0.25, "embeddings": "rotate"}, "embeddings must be one of keep, slice"),
    ({"sparsity": 0.25, "criterion": "wanda"}, "slicegpt chooses what to remove itself"),
    ({"sparsity": 0.25, "pattern": "2:4"}, "leave pattern unset"),
    ({"sparsity": 0.99}, "leaves no channel"),
    ({"sparsity": 0.25, "calib": None}, "calibration data"),
    ({"sparsity": 0.25, "targets": ["layers.0"]}, "no targets"),
])
def test_bad_slicegpt_requests(kwargs, message):
    model = _tied_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsity = kwargs.pop("sparsity")
    kwargs.setdefault("calib", calib_ids(2, 8))
    with pytest.raises(SparsecraftError, match=message):
        sparsecraft.prune(model, sparsity, method="slicegpt", progress=False, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(SparsecraftError, match="Llama-style"):
        sparsecraft.prune(HF_MAKERS["gpt2"](), 0.25, method="slicegpt", calib=calib_ids(2, 8), progress=False)
