"""Selective scan: ``reference`` (the specification), ``chunked`` (the parallel torch path), ``triton`` (GPU kernels,
imported on first use) and the picking function."""

from vizoo.kernels.selective_scan.interface import BACKENDS, selective_scan, selective_scan_macs
from vizoo.kernels.selective_scan.states import selective_scan_states

__all__ = ["BACKENDS", "selective_scan", "selective_scan_macs", "selective_scan_states"]
