"""Fashion-MNIST idx reader: format, gz, limits, and the error naming the apt package."""

import gzip
import struct

import numpy as np
import pytest

from sparsecraft.data.fashion_mnist import FILES, load_fashion_mnist, read_idx
from sparsecraft.errors import SparsecraftError


def write_idx(path, arr, gz):
    raw = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        write_idx(tmp_path / FILES[f"{split}_images"], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz=True)
        write_idx(tmp_path / FILES[f"{split}_labels"], rng.integers(0, 10, n, dtype=np.uint8), gz=False)
    return tmp_path


def test_reads_idx_and_gz(folder):
    x, y, xt, yt = load_fashion_mnist(folder, normalize=False)
    assert x.shape == (6, 1, 28, 28) and xt.shape == (4, 1, 28, 28) and y.dtype.is_floating_point is False
    raw = read_idx(str(folder / FILES["train_images"]) + ".gz")
    assert np.allclose(x[:, 0].numpy() * 255, raw)
    x, _, _, _ = load_fashion_mnist(folder, flatten=True, limit=2)
    assert x.shape == (2, 784)


def test_missing_folder_or_file_names_the_package(tmp_path):
    with pytest.raises(SparsecraftError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "absent")
    with pytest.raises(SparsecraftError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)


def test_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01")
    with pytest.raises(SparsecraftError, match="not a uint8 idx"):
        read_idx(tmp_path / "bad")
