"""find_targets: one target per tensor, tied weights listed once with their aliases."""

from torch import nn

from sparsecraft.targets import find_targets


def _tied() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.Linear(6, 2))
    model[2].weight = model[0].weight
    return model


def test_a_shared_weight_is_one_target_with_aliases() -> None:
    model = _tied()
    targets = find_targets(model)
    assert [t.name for t in targets] == ["0.weight", "3.weight"]
    assert [name for name, _ in targets[0].aliases] == ["2"]
    assert targets[0].modules == [model[0], model[2]]
    assert targets[0].names == ["0", "0.weight", "2", "2.weight"]


def test_rules_see_every_name_of_a_shared_weight() -> None:
    model = _tied()
    assert [t.name for t in find_targets(model, ignore=["^2$"])] == ["3.weight"]
    assert [t.name for t in find_targets(model, targets=[r"^2\."])] == ["0.weight"]
