"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), as float tensors.

Pixel values 0..16 are scaled to [0, 1]; the split is a seeded stratified 80/20.
"""

from __future__ import annotations

import torch


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) with x of shape (n, 64)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = torch.tensor(ds.data, dtype=torch.float32) / 16.0
    y = torch.tensor(ds.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=test_fraction, random_state=seed, stratify=ds.target
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]
