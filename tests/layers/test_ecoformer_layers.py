"""EcoFormer's hashed attention and kernelised hashing: the attention against its formulas written the quadratic
way, the fit's sparse target against the dense N x N matrix, and the fit's determinism and what it learns."""

import pytest
import torch
import torch.nn.functional as F

from vizoo.layers.ecoformer import (
    EcoFormerAttention,
    KernelizedHashing,
    SimilarityTarget,
    _sign,
    hashed_attention,
    l2_normalize,
)


def random_codes(*shape):
    return torch.randint(0, 2, shape).float() * 2 - 1


def quadratic_hashed_attention(codes, v, bias_form):
    """The attention with its N x N similarity matrix, as the paper writes it (or as the released code computes it)."""
    c = codes.shape[-1] + 1
    sim = codes @ codes.transpose(-1, -2)  # h_i·h_j
    denominator = (sim + c).sum(-1, keepdim=True)
    if bias_form == "paper":
        return (sim + c) @ v / denominator
    return (sim @ v + c * v) / denominator


@pytest.mark.parametrize("bias_form", ["released", "paper"])
@pytest.mark.parametrize("shape", [(1, 1, 37, 16, 8), (2, 3, 50, 16, 5), (2, 2, 7, 4, 12)])
def test_hashed_attention_matches_the_quadratic_form(bias_form, shape):
    b, h, n, bits, dv = shape
    codes = random_codes(b, h, n, bits)
    v = torch.randn(b, h, dv, n).transpose(-1, -2).requires_grad_()  # non-contiguous
    out = hashed_attention(codes, v, bias_form)
    expected = quadratic_hashed_attention(codes, v, bias_form)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, v, grad)
    (g_ref,) = torch.autograd.grad(expected, v, grad)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_hashed_attention_runs_in_fp32_for_low_precision_values_of_magnitude_100():
    codes = random_codes(2, 2, 64, 16)
    v = 100 * torch.randn(2, 2, 64, 8)
    for dtype in (torch.bfloat16, torch.float16):
        out = hashed_attention(codes.to(dtype), v.to(dtype), "released")
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        torch.testing.assert_close(out, hashed_attention(codes, v.to(dtype).float(), "released"))
    with pytest.raises(ValueError, match="unknown bias_form"):
        hashed_attention(codes, v, "other")


def dense_target(x, k, scale):
    sim = x @ x.transpose(-1, -2)
    target = torch.zeros_like(sim)
    target.scatter_(-1, sim.topk(k, dim=-1).indices, 1.0)
    target.scatter_(-1, sim.topk(k, dim=-1, largest=False).indices, -1.0)  # -1 written second, as released
    return scale * target


@pytest.mark.parametrize("n, k", [(50, 10), (16, 10), (7, 7)])  # 16 and 7 tokens: the top and bottom 10 overlap
def test_sparse_target_matches_the_dense_matrix(n, k):
    x = F.normalize(torch.randn(2, 3, n, 8), dim=-1)
    target = SimilarityTarget(x, k, scale=16.0, block_elements=64)  # several row blocks in the top-k search
    dense = dense_target(x, k, 16.0)
    for _ in range(3):
        y = torch.randn(2, 3, n)
        expected = ((dense + dense.transpose(-1, -2)) @ y.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(target.symmetric_product(y), expected, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(
            target.quadratic(y), torch.einsum("bhn,bhnl,bhl->bh", y, dense, y), atol=1e-2, rtol=1e-5
        )
        bit = random_codes(2, 3, n)
        target.subtract(bit)
        dense = dense - bit.unsqueeze(-1) * bit.unsqueeze(-2)


def clustered_tokens(b=2, h=2, n=48, d=16, clusters=4, seed=0):
    """Unit tokens around a few centres: neighbours are the same cluster, so good codes are learnable."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(h, clusters, d, generator=g), dim=-1)
    labels = torch.randint(clusters, (b, h, n), generator=g)
    x = centres[torch.arange(h)[None, :, None], labels] + 0.15 * torch.randn(b, h, n, d, generator=g)
    return F.normalize(x, dim=-1), labels


def test_fit_is_deterministic_given_the_seed_and_picks_anchors_among_the_tokens():
    x, _ = clustered_tokens()
    first, second, other = KernelizedHashing(2, 16, seed=3), KernelizedHashing(2, 16, seed=3), KernelizedHashing(2, 16)
    torch.manual_seed(0)
    first.fit(x)
    torch.manual_seed(1)  # the global RNG does not matter
    second.fit(x)
    other.fit(x)
    for name in ("anchors", "kernel_mean", "projection"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name), rtol=0, atol=0)
    assert not torch.equal(first.anchors, other.anchors)
    assert first.is_fitted and bool(first.fitted)
    # anchors are tokens of the first image; μ centres the kernel over the batch
    assert (first.anchors.unsqueeze(2) == x[0].unsqueeze(1)).all(-1).any(-1).all()
    assert first.kernel(x).mean(dim=(0, 2)).abs().max() < 1e-5


def test_fit_with_fewer_tokens_than_anchors_draws_from_the_batch():
    x = F.normalize(torch.randn(3, 1, 9, 8), dim=-1)  # 9 tokens an image, 25 anchors, 27 in the batch
    hashing = KernelizedHashing(1, 8)
    hashing.fit(x)
    assert (hashing.anchors[0].unsqueeze(1) == x.reshape(27, 8)).all(-1).any(-1).all()
    assert torch.isfinite(hashing.projection).all()


def test_codes_are_signs_with_a_clipped_straight_through_gradient():
    hashing = KernelizedHashing(2, 8, num_bits=6)
    x = F.normalize(torch.randn(1, 2, 20, 8), dim=-1).requires_grad_()
    codes = hashing(x)
    assert codes.shape == (1, 2, 20, 6) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    z = hashing.kernel(x) @ hashing.projection.transpose(-1, -2)
    grad = torch.randn_like(codes)
    (g,) = torch.autograd.grad(codes, x, grad)
    (g_ref,) = torch.autograd.grad(z, x, grad * (z.abs() < 1))
    torch.testing.assert_close(g, g_ref)


def test_export_friendly_sign_and_normalisation_match_torch():
    """Sign as a Div by max(|z|, tiny) and the l2 normalisation from a ReduceMean (NNAPI lacks Sign, ReduceL2)."""
    z = torch.cat([torch.randn(1000) * 10.0 ** torch.randint(-30, 30, (1000,)), torch.zeros(3)])
    assert torch.equal(_sign(z), torch.sign(z))
    x = torch.randn(2, 3, 17, 8) * 5
    x[0, 0, 0] = 0.0
    torch.testing.assert_close(l2_normalize(x), F.normalize(x, dim=-1))


def test_fitted_codes_keep_neighbours_close_and_beat_the_starting_projection():
    """KSH's objective: the fitted bits agree on each token's top-k neighbours and disagree on its bottom-k. Every
    fitted bit is kept only if its codes score at least as well as its random start, so the fit never loses."""
    x, labels = clustered_tokens(n=64)
    hashing = KernelizedHashing(2, 16, seed=0)
    hashing.fit(x)
    codes = hashing(x)
    inner = codes @ codes.transpose(-1, -2) / codes.shape[-1]  # in [-1, 1]
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    assert inner[same].mean() > 0.5 and inner[~same].mean() < 0.2
    target = SimilarityTarget(x, 10, scale=16.0)
    kernel = hashing.kernel(x)
    generator = torch.Generator().manual_seed(0)  # the fit's draws: anchor indices, then the starting projections
    torch.randperm(64, generator=generator)
    start = torch.randn(2, 16, 25, generator=generator)
    for bit in range(16):
        fitted, initial = hashing._codes(kernel, hashing.projection[:, bit]), hashing._codes(kernel, start[:, bit])
        assert hashing._loss(fitted, target) <= hashing._loss(initial, target) + 1e-6
        target.subtract(fitted)


def test_attention_fits_on_its_first_training_pass_and_warns_once_in_eval_when_unfitted():
    attn = EcoFormerAttention(32, num_heads=2)
    x = torch.randn(2, 40, 32)
    with pytest.warns(UserWarning, match="not fitted"):
        attn.eval()(x)
    assert not attn.hashing.is_fitted
    attn.train()(x)
    assert attn.hashing.is_fitted
    projection = attn.hashing.projection.clone()
    attn(torch.randn(2, 40, 32))  # fitted once: later batches do not refit
    torch.testing.assert_close(attn.hashing.projection, projection, rtol=0, atol=0)
    fresh = EcoFormerAttention(32, num_heads=2).eval()
    fresh.load_state_dict(attn.state_dict())
    assert fresh.hashing.is_fitted  # the flag travels with the checkpoint
    torch.testing.assert_close(fresh(x), attn.eval()(x))


def test_attention_output_under_bf16_autocast_is_close_to_fp32():
    attn = EcoFormerAttention(32, num_heads=2).train()
    x = 100 * torch.randn(2, 40, 32)
    attn(x)
    attn.eval()
    with torch.no_grad():
        expected = attn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(x)
    assert torch.isfinite(out).all()
    # bf16 projections flip the code bits whose projection is near 0, each moving its token's output by ~1/b
    assert ((out.float() - expected).abs().mean() / expected.abs().mean()) < 0.1


def test_fit_under_bf16_autocast_is_the_fp32_fit():
    x, _ = clustered_tokens()
    plain, autocast = KernelizedHashing(2, 16), KernelizedHashing(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast.fit(x.bfloat16())  # bf16 tokens, as an autocast model gives them
    plain.fit(x.bfloat16().float())  # the same values, no autocast
    for name in ("anchors", "kernel_mean", "projection"):
        torch.testing.assert_close(getattr(autocast, name), getattr(plain, name), rtol=0, atol=0)
