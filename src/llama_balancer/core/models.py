"""Model names: instance variants (``m``, ``m-2``, ``m-3`` ...) and the public model list."""
from __future__ import annotations

import re

_VARIANT = re.compile(r"^.+-\d+$")


def is_variant(name: str) -> bool:
    """Names ending in ``-<digits>`` are instance copies, hidden from ``/v1/models``."""
    return _VARIANT.match(name) is not None


def instances_of(model: str, served: list[str] | tuple[str, ...]) -> list[str]:
    """The served instances of ``model`` in order: the model itself first, then ``-2``, ``-3`` ..."""
    prefix = model + "-"
    numbered = []
    for name in served:
        if name.startswith(prefix) and name[len(prefix):].isdecimal():
            numbered.append((int(name[len(prefix):]), name))
    ordered = [name for _, name in sorted(numbered)]
    return ([model] if model in served else []) + ordered


def public_models(model_ids: list[str]) -> list[str]:
    """Sorted union of model ids without instance variants."""
    return sorted({name for name in model_ids if not is_variant(name)})
