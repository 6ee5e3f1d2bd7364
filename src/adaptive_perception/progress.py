"""Progress bars on a terminal; in logs and CI, one line when a stage starts instead."""
from __future__ import annotations

import sys
from typing import Iterable

from tqdm import tqdm


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True) -> tqdm:
    """A tqdm bar where stderr is a terminal; elsewhere a single line naming the stage (and its size)."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit)
    size = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    print(f"{desc}: {counted(size, unit)}" if size is not None else f"{desc} ...", file=sys.stderr, flush=True)
    return tqdm(iterable, total=total, disable=True)


IRREGULAR = {"epoch": "epochs"}  # a hard "ch"


def counted(size: int, unit: str) -> str:
    """The size with its unit: 1 frame, 20 frames, 20 passes, 20 epochs."""
    if size == 1:
        return f"1 {unit}"
    return f"{size} " + IRREGULAR.get(unit, f"{unit}{'es' if unit.endswith(('s', 'x', 'ch', 'sh')) else 's'}")
