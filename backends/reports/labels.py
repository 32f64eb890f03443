"""Short labels for tensors whose names share most of their text.

TFLite converters name tensors after every op folded into them
("model/activation_5/Relu;model/batch_normalization_5/...;model/conv2d_2/BiasAdd"),
so every name of vww_96_int8 starts with "model/": a label cut to fit shows only that.
The label keeps what tells the names apart: the first of the ';'-joined names, without
the path components all names share at the front.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SPLIT = re.compile(r"[/:]")


def short_labels(names: Mapping[int, str]) -> dict[int, str]:
    """id -> the distinguishing part of its name (unique: a clash gets "#id" appended)."""
    parts = {t: [p for p in _SPLIT.split(n.split(";")[0]) if p] or [n] for t, n in names.items()}
    multi = [p for p in parts.values() if len(p) > 1]
    shared = 0
    if len(multi) > 1:
        while all(len(p) > shared + 1 and p[shared] == multi[0][shared] for p in multi):
            shared += 1
    labels = {t: "/".join(p[shared:] if len(p) > shared else p[-1:]) for t, p in parts.items()}
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {t: label if seen[label] == 1 else f"{label}#{t}" for t, label in labels.items()}


def key_part(label: str) -> str:
    """The one component most likely to tell a label apart: the last one with a digit."""
    comps = _SPLIT.split(label.split("#")[0])
    numbered = [c for c in comps if any(ch.isdigit() for ch in c)]
    return (numbered or comps)[-1]
