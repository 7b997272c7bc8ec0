"""VMamba's cross-scan routes: ``reference`` (index lists, the specification), ``torch_ops``, ``triton``, and the
pickers."""

from vizoo.kernels.cross_scan.interface import cross_merge, cross_scan, route_order
from vizoo.kernels.cross_scan.reference import cross_scan_routes

__all__ = ["cross_merge", "cross_scan", "cross_scan_routes", "route_order"]
