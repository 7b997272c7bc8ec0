"""VMamba's cross-scan, selective scan and cross-merge as one op: ``reference`` and ``torch_ops`` (the three kernels
composed) and ``triton`` (one fused kernel that never materialises the four route copies)."""

from vizoo.kernels.cross_selective_scan.interface import BACKENDS, cross_selective_scan

__all__ = ["BACKENDS", "cross_selective_scan"]
