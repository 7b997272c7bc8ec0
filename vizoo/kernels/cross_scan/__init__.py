"""VMamba's cross-scan routes: ``reference`` (index lists, the specification), ``torch_ops``, ``triton``, and the
pickers."""

from vizoo.kernels.cross_scan.interface import cross_merge, cross_scan, route_order
from vizoo.kernels.cross_scan.multiscale import multiscale_merge, multiscale_scan
from vizoo.kernels.cross_scan.reference import cross_scan_routes
from vizoo.kernels.cross_scan.routes import (
    atrous_merge,
    atrous_scan,
    bidirectional_merge,
    bidirectional_scan,
    unidirectional_merge,
    unidirectional_scan,
)

__all__ = [
    "atrous_merge",
    "atrous_scan",
    "bidirectional_merge",
    "bidirectional_scan",
    "cross_merge",
    "cross_scan",
    "cross_scan_routes",
    "multiscale_merge",
    "multiscale_scan",
    "route_order",
    "unidirectional_merge",
    "unidirectional_scan",
]
