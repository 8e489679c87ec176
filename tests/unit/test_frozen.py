"""core/frozen.py: quick_init builds the same frozen dataclass instances, only faster."""
from __future__ import annotations

import dataclasses

import pytest

from llama_balancer.core.frozen import quick_init


@dataclasses.dataclass(frozen=True)
class Plain:
    name: str
    count: int = 1
    tags: dict = dataclasses.field(default_factory=dict)


@quick_init
@dataclasses.dataclass(frozen=True)
class Quick:
    name: str
    count: int = 1
    tags: dict = dataclasses.field(default_factory=dict)


def test_quick_init_takes_the_same_arguments_and_defaults():
    for args, kwargs in [(("a",), {}), (("a", 2), {}), (("a",), {"tags": {"x": 1}}), ((), {"name": "b", "count": 3})]:
        plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)
        assert dataclasses.astuple(plain) == dataclasses.astuple(quick)
        assert repr(quick) == repr(plain).replace("Plain", "Quick")


def test_quick_init_instances_stay_frozen_hashable_and_comparable():
    quick = Quick("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.name = "b"  # type: ignore[misc]
    assert Quick("a", 2) == Quick("a", 2) and Quick("a") != Quick("b")
    assert hash(Quick("a", 2, ())) == hash(Quick("a", 2, ()))  # type: ignore[arg-type]


def test_each_instance_gets_its_own_default_factory_value():
    assert Quick("a").tags is not Quick("a").tags


def test_quick_init_refuses_missing_or_extra_arguments_like_the_dataclass():
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick("a", 1, {}, 4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick("a", nope=1)  # type: ignore[call-arg]


def test_quick_init_refuses_classes_it_cannot_reproduce():
    @dataclasses.dataclass
    class Mutable:
        x: int

    @dataclasses.dataclass(frozen=True)
    class Posted:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        x: int

    for cls in (Mutable, Posted, Slotted):
        with pytest.raises(TypeError):
            quick_init(cls)
