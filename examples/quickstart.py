"""Quick start: prune an MLP three ways, read the exact report, save and reload it.

Run: python examples/quickstart.py
"""

import torch
from torch import nn

import sparsecraft


def make_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


# 1. 90% unstructured with ERK layer budgets (the classifier gets 0% because ERK saturates it)
model = make_mlp()
print(sparsecraft.prune(model, 0.9, distribution="erk"))

# 2. one global magnitude ranking, first layer kept dense
model = make_mlp()
print(sparsecraft.prune(model, 0.8, distribution="global", ignore=[r"^0$"]))

# 3. 2:4 everywhere except a layer that cannot take it is skipped instead of raising
model = make_mlp()
rep = sparsecraft.prune(model, 0.0, pattern="2:4", skip_unfit=True)
print(rep)

# save (safetensors + JSON metadata, masks as bits, atomic) and reload into a fresh model
sparsecraft.save(model, "/tmp/quickstart.safetensors")
fresh = make_mlp()
sparsecraft.load(fresh, "/tmp/quickstart.safetensors")
x = torch.randn(4, 784)
assert torch.equal(model(x), fresh(x))
print("reloaded model gives bit-identical outputs")
