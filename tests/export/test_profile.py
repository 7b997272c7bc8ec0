"""onnxruntime's profile of an exported graph (vizoo.export.profile): time per op type and the matrix products'
FLOPs, counted from the shapes onnxruntime reports."""

import torch

from vizoo.export.onnx import build_onnx_graph
from vizoo.export.profile import MATRIX_PRODUCT_OPS, matmul_peak_gflops, onnx_profile


class Products(torch.nn.Module):
    """Three kinds of matrix product: a Linear on rows before a ReLU (FusedGemm in onnxruntime), a batched product
    with a transposed first input, and a weight broadcast over the batch as the first input."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(24, 40)
        self.left = torch.nn.Parameter(torch.randn(40, 16))

    def forward(self, x):  # x: (2, 16, 24)
        a = self.linear(x.flatten(0, 1))  # (32, 24) @ (24, 40): 2 * 32 * 24 * 40 FLOPs
        b = x.transpose(1, 2) @ x  # (2, 24, 16) @ (2, 16, 24): 2 * 2 * 24 * 16 * 24
        c = self.left @ x  # (40, 16) @ (2, 16, 24): 2 * 2 * 40 * 16 * 24
        return torch.relu(a).sum() + b.sum() + c.sum()


def test_profile_counts_matrix_product_flops_and_splits_time_by_op_type(tmp_path):
    x = torch.randn(2, 16, 24)
    path = tmp_path / "products.onnx"
    path.write_bytes(
        build_onnx_graph(Products().eval(), (x,), ["x"], ["y"], False, 18, True, False).SerializeToString()
    )
    profile = onnx_profile(path, x, passes=5)
    assert profile.matrix_product_flops == 2 * (32 * 24 * 40 + 2 * 24 * 16 * 24 + 2 * 40 * 16 * 24)
    products = set(profile.ms_by_op) & set(MATRIX_PRODUCT_OPS)
    assert products and sum(profile.nodes_by_op[op] for op in products) == 3
    assert all(ms > 0 for ms in profile.ms_by_op.values()) and "ReduceSum" in profile.ms_by_op
    assert list(profile.ms_by_op.values()) == sorted(profile.ms_by_op.values(), reverse=True)
    product_ms = sum(profile.ms_by_op[op] for op in products)
    assert abs(profile.matrix_product_gflops * product_ms * 1e6 - profile.matrix_product_flops) < 1e-3
    assert matmul_peak_gflops(size=256, passes=3) > 0
