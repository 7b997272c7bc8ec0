"""Selective scan: ``reference`` (the specification), ``chunked`` (the parallel torch path), ``triton`` (GPU kernels,
imported on first use) and the picking function."""

from vizoo.kernels.selective_scan.interface import BACKENDS, selective_scan, selective_scan_macs

__all__ = ["BACKENDS", "selective_scan", "selective_scan_macs"]
