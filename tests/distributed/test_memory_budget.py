"""The memory budget: the smallest known limit, an override, sizes in words."""

import resource

import pytest

from sparsecraft.distributed import memory_budget
from sparsecraft.errors import SparsecraftError


def test_parse_size():
    assert memory_budget.parse_size("1.5G") == int(1.5 * 2**30)
    assert memory_budget.parse_size("800M") == 800 * 2**20 and memory_budget.parse_size("123") == 123
    with pytest.raises(SparsecraftError, match="bad memory size"):
        memory_budget.parse_size("lots")


def test_override_and_measured(monkeypatch):
    monkeypatch.setenv("SPARSECRAFT_MEMORY_BUDGET", "2G")
    assert memory_budget.budget() == (2 * 2**30, "given budget")
    assert memory_budget.budget(1000) == (1000, "given budget")
    monkeypatch.delenv("SPARSECRAFT_MEMORY_BUDGET")
    rooms = memory_budget.headrooms()
    value, name = memory_budget.budget()
    if rooms:
        assert value == min(rooms.values()) and name in rooms


def test_address_space_limit_is_seen(monkeypatch):
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (memory_budget._vm_size() + 5 * 2**20, hard)
                        if what == resource.RLIMIT_AS else (soft, hard))
    assert 0 < memory_budget.headrooms()["address-space"] <= 5 * 2**20 + 2**20
    assert memory_budget.budget()[1] == "address-space"
