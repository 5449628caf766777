"""Progress of long osp-admin work on a terminal (tqdm on stderr); nothing when piped.

Route imports of a million rows, usage exports and backups take minutes: on a terminal
the operator sees how far they are, while a script or a pipe gets clean output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(
    *,
    total: float | None,
    unit: str,
    description: str,
    stream: TextIO | None = None,
    unit_scale: bool = True,
) -> Any:
    """A tqdm bar on ``stream`` (stderr), disabled unless it is a terminal;
    ``unit_scale`` writes large counts as 1.2M (off for counts of a few steps)."""
    out = stream if stream is not None else sys.stderr
    return tqdm(
        total=total,
        unit=unit,
        unit_scale=unit_scale,
        desc=description,
        file=out,
        disable=not out.isatty(),
        leave=False,
    )


def counting_bytes(lines: Iterable[T], bar: Any) -> Iterator[T]:
    """``lines`` as they are, the bar moved by each line's length (a file's progress)."""
    for line in lines:
        bar.update(len(line))  # type: ignore[arg-type]
        yield line
