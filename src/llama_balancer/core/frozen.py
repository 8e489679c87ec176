"""Cheaper construction of the frozen dataclasses built once or more per request.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__``
(to get past its own ``__setattr__``, which refuses); with a dozen fields that is a good
part of a routing decision's cost. ``quick_init`` gives such a class an ``__init__`` with
the same parameters and defaults that writes the instance ``__dict__`` directly: the
instance, its equality, hash, repr and frozenness are what the dataclass makes them.
"""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Replace frozen dataclass ``cls``'s ``__init__`` (apply above ``@dataclass``).

    Refuses what it does not reproduce: ``__post_init__``, ``InitVar``, ``init=False`` or
    keyword-only fields, ``__slots__``.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__}: quick_init is for frozen dataclasses")
    declared = getattr(cls, "__dataclass_fields__")
    own = fields(cls)  # type: ignore[arg-type]
    if (hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__ or len(declared) != len(own)
            or any(not f.init or f.kw_only for f in own)):
        raise TypeError(f"{cls.__name__}: quick_init supports plain fields only")
    env: dict[str, Any] = {"_MISSING": MISSING}
    args: list[str] = []
    body: list[str] = []
    for f in own:
        if f.name in ("_self_", "_dict_") or f.name.startswith("_d_") or f.name.startswith("_f_"):
            raise TypeError(f"{cls.__name__}: field name {f.name!r} is reserved")
        if f.default is not MISSING:
            env[f"_d_{f.name}"] = f.default
            args.append(f"{f.name}=_d_{f.name}")
        elif f.default_factory is not MISSING:
            env[f"_f_{f.name}"] = f.default_factory
            args.append(f"{f.name}=_MISSING")
            body.append(f"    if {f.name} is _MISSING:\n        {f.name} = _f_{f.name}()")
        else:
            args.append(f.name)
        body.append(f"    _dict_[{f.name!r}] = {f.name}")
    source = f"def __init__(_self_, {', '.join(args)}):\n    _dict_ = _self_.__dict__\n" + "\n".join(body) + "\n"
    exec(source, env)  # noqa: S102 - the source is built from the class's own field names
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = f"Build a {cls.__name__} (fields in declaration order)."
    cls.__init__ = init  # type: ignore[misc]
    return cls
