"""Fashion-MNIST (Xiao et al. 2017) from the idx files on disk, as tensors.

Reads ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` from a folder (default
``/usr/share/datasets/fashion-mnist/``, filled by the Debian package
``dataset-fashion-mnist``). Nothing is downloaded. Images come back as float32 in [0, 1]
of shape (n, 1, 28, 28) (``flatten=True``: (n, 784)), optionally normalised with the
training-set mean/std; labels as int64.

idx format: big-endian magic ``0x0000 <dtype> <ndim>`` (dtype 0x08 = uint8), then ``ndim``
big-endian uint32 sizes, then the data.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")  # fmt: skip
MEAN, STD = 0.2860, 0.3530  # training-set pixel statistics (after scaling to [0, 1])


def default_dir() -> Path:
    return Path(os.environ.get("SPARSECRAFT_FASHION_MNIST", DEFAULT_DIR))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise SparsecraftError(
        f"Fashion-MNIST file {stem}[.gz] not found in {str(folder)!r}; install the Debian package "
        "with `apt-get install dataset-fashion-mnist` or pass the folder holding the idx files"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx(.gz) file into a numpy array (uint8 data only)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise SparsecraftError(f"cannot read idx file {str(path)!r}: {e}") from None
    if len(raw) < 4:
        raise SparsecraftError(f"{path} is too short to be an idx file")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise SparsecraftError(f"{path} is not a uint8 idx file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SparsecraftError(f"{path}: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def load_fashion_mnist(
    path: str | os.PathLike | None = None,
    flatten: bool = False,
    normalize: bool = True,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); ``limit`` keeps the first n of each split."""
    folder = Path(path) if path is not None else default_dir()
    if not folder.is_dir():
        raise SparsecraftError(
            f"Fashion-MNIST folder {str(folder)!r} does not exist; install it with "
            "`apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist/)"
        )
    out = []
    for split in ("train", "test"):
        images = read_idx(_find(folder, FILES[f"{split}_images"]))
        labels = read_idx(_find(folder, FILES[f"{split}_labels"]))
        if images.shape[0] != labels.shape[0]:
            raise SparsecraftError(f"{folder}: {split} images and labels differ in count")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        if normalize:
            x = (x - MEAN) / STD
        if flatten:
            x = x.reshape(x.shape[0], -1)
        out += [x, torch.from_numpy(labels.astype(np.int64))]
    return out[0], out[1], out[2], out[3]
