"""Small vision models for sparse-training experiments on 28x28 grey images.

* ``mlp``: 784-300-100-10 LeNet-300-100 (LeCun et al. 1998), the MLP of the SET/RigL papers'
  small benchmarks; ReLU, no dropout.
* ``cnn``: conv(1->32, 3) - ReLU - maxpool 2 - conv(32->64, 3) - ReLU - maxpool 2 -
  fc(64*5*5 -> 128) - ReLU - fc(128 -> 10). The first conv has 1 input channel (9 weights per
  filter) so N:M cannot apply to it: keep it dense (``ignore=["features.0"]``). Every other
  layer has an input width divisible by 4 and 8 (conv2: 32 channels, fc1: 1600, fc2: 128), so
  2:4, 1:4 and 4:8 fit. Layer names: ``features.0``, ``features.3``, ``classifier.1``,
  ``classifier.3``.
"""

from __future__ import annotations

from torch import nn

from sparsecraft.errors import SparsecraftError


def mlp(in_features: int = 784, hidden: tuple[int, ...] = (300, 100), classes: int = 10) -> nn.Sequential:
    """784-300-100-10 MLP; input (n, 784) or (n, 1, 28, 28) (flattened first)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Two conv blocks and two fully connected layers for (n, 1, 28, 28) inputs."""

    def __init__(self, classes: int = 10, channels: tuple[int, int] = (32, 64), hidden: int = 128):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 5 * 5, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x):  # noqa: ANN001, ANN201
        if x.dim() == 2:
            x = x.view(x.shape[0], 1, 28, 28)
        return self.classifier(self.features(x))


#: default keep-dense rules per model (layers a training recipe should not sparsify)
DEFAULT_IGNORE = {"mlp": [], "cnn": ["features.0"]}


def build_vision_model(name: str, classes: int = 10) -> nn.Module:
    """``"mlp"`` or ``"cnn"``."""
    if name == "mlp":
        return mlp(classes=classes)
    if name == "cnn":
        return SmallCNN(classes=classes)
    raise SparsecraftError(f"unknown vision model {name!r}; allowed: mlp, cnn")
