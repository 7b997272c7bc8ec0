"""Pure tensor ops shared by vizoo's families, one folder per op.

Each op folder holds a ``reference`` implementation that is the specification, faster paths, and one public function
that picks a backend: ``selective_scan`` (Mamba's S6 recurrence), ``cross_scan`` / ``cross_merge`` (VMamba's four
2D scan routes), ``cross_selective_scan`` (the three fused, as SS2D uses them) and ``bi_wkv`` (Vision-RWKV's
bidirectional WKV). Backends: ``"reference"``, ``"torch"`` and ``"triton"`` (GPU; see ``vizoo.kernels.backend`` for
how None picks one).
"""

from vizoo.kernels.backend import available_backends, force_backend
from vizoo.kernels.bi_wkv import bi_wkv
from vizoo.kernels.counting import count_kernel_macs
from vizoo.kernels.cross_scan import cross_merge, cross_scan, route_order
from vizoo.kernels.cross_selective_scan import cross_selective_scan
from vizoo.kernels.linear_attention import additive_recurrence, linear_attention
from vizoo.kernels.selective_scan import selective_scan, selective_scan_macs

__all__ = [
    "additive_recurrence",
    "available_backends",
    "bi_wkv",
    "count_kernel_macs",
    "cross_merge",
    "cross_scan",
    "cross_selective_scan",
    "force_backend",
    "linear_attention",
    "route_order",
    "selective_scan",
    "selective_scan_macs",
]
