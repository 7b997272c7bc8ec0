"""Pure tensor ops shared by vizoo's families, one folder per op.

Each op folder holds a ``reference`` implementation that is the specification, faster paths, and one public function
that picks a backend: ``selective_scan`` (Mamba's S6 recurrence) and ``cross_scan`` / ``cross_merge`` (VMamba's four
2D scan routes).
"""

from vizoo.kernels.backend import available_backends, force_backend
from vizoo.kernels.counting import count_kernel_macs
from vizoo.kernels.cross_scan import cross_merge, cross_scan
from vizoo.kernels.selective_scan import selective_scan, selective_scan_macs

__all__ = [
    "available_backends",
    "count_kernel_macs",
    "cross_merge",
    "cross_scan",
    "force_backend",
    "selective_scan",
    "selective_scan_macs",
]
