"""Multiply-accumulate (MAC) counting for kernels that ``torch.utils.flop_counter`` cannot see.

``FlopCounterMode`` counts matmuls and convolutions. A scan kernel is elementwise work whose cost the papers count with
their own formula (VMamba counts the selective scan as 9·B·L·D·N MACs). Kernels call ``record_kernel_macs`` with that
formula; ``count_kernel_macs`` collects the records. Kernels that record must not also run matmuls or convolutions, so
nothing is counted twice.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

_active: list[Counter] = []


@contextlib.contextmanager
def count_kernel_macs() -> Iterator[Counter]:
    """Collect ``{op_name: macs}`` for every kernel call made inside the block."""
    counter: Counter = Counter()
    _active.append(counter)
    try:
        yield counter
    finally:
        _active.remove(counter)


def record_kernel_macs(op: str, macs: int) -> None:
    for counter in _active:
        counter[op] += int(macs)
