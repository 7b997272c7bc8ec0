"""The linear-attention mixers against their formulas written the quadratic way, RoPE against complex rotation, and
fp16/bf16 robustness with activations of magnitude ~100."""

import pytest
import torch
import torch.nn.functional as F

from vizoo.layers.linear_attention import (
    MagnitudeAwareLinearAttention,
    MLLALinearAttention,
    NormAttention,
    RoPE2d,
    SoftmaxAttentionRoPE,
    StripAttention,
    apply_rope_2d,
)


def heads(x, n):  # (b, tokens, c) -> (b, n, tokens, c/n)
    return x.reshape(x.shape[0], x.shape[1], n, -1).transpose(1, 2)


def rope_complex(x, h, w, freqs):
    """The official MLLA way: view channel pairs as complex numbers and multiply by e^{i·angle}."""
    quarter = freqs.shape[0]
    rows = torch.arange(h)[:, None, None] * freqs
    cols = torch.arange(w)[None, :, None] * freqs
    angles = torch.cat([rows.expand(h, w, quarter), cols.expand(h, w, quarter)], -1).reshape(h * w, 2 * quarter)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


@pytest.mark.parametrize("spacing", ["arange", "linspace"])
def test_real_rope_is_the_complex_rotation_on_a_non_square_grid(spacing):
    h, w, d = 3, 5, 16
    rope = RoPE2d(d, spacing=spacing)
    x = torch.randn(2, h * w, d)
    sin, cos = rope(h, w)
    torch.testing.assert_close(apply_rope_2d(x, sin, cos), rope_complex(x, h, w, rope.freqs[0::2]))
    with pytest.raises(ValueError, match="divisible by 4"):
        RoPE2d(6)


def test_mlla_attention_matches_its_quadratic_formula():
    torch.manual_seed(0)
    b, h, w, c, nh = 2, 4, 6, 16, 2
    attn = MLLALinearAttention(c, nh).eval()
    x = torch.randn(b, h, w, c)
    n = h * w
    q, k = (F.elu(t) + 1 for t in attn.qk(x.reshape(b, n, c)).chunk(2, -1))
    sin, cos = attn.rope(h, w)
    qr, kr = heads(apply_rope_2d(q, sin, cos), nh), heads(apply_rope_2d(k, sin, cos), nh)
    v = heads(x.reshape(b, n, c), nh)
    z = heads(q, nh) @ heads(k, nh).mean(2, keepdim=True).transpose(-1, -2) + 1e-6
    y = (qr @ kr.transpose(-1, -2) / n) @ v / z  # the n x n score matrix
    y = y.transpose(1, 2).reshape(b, h, w, c) + attn.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), y, rtol=1e-4, atol=1e-5)


def test_mala_attention_matches_its_quadratic_formula():
    torch.manual_seed(0)
    b, c, h, w, nh = 2, 32, 4, 6, 2
    attn = MagnitudeAwareLinearAttention(c, nh).eval()
    x = torch.randn(b, c, h, w)
    n, d = h * w, c // nh
    q, k, v, o = attn.qkvo(x).chunk(4, 1)
    lepe = attn.lepe(v)
    q, k, v = (t.reshape(b, nh, d, n).transpose(-1, -2) for t in (q, k, v))
    q, k = F.elu(q) + 1, F.elu(k) + 1
    z = q @ k.mean(2, keepdim=True).transpose(-1, -2) * d**-0.5
    sin, cos = attn.rope(h, w)
    scores = apply_rope_2d(q, sin, cos) @ apply_rope_2d(k, sin, cos).transpose(-1, -2) * d**-0.5 / n
    y = (scores @ v) * (1 + 1 / (z + 1e-6)) - z * v.mean(2, keepdim=True)
    y = y.transpose(-1, -2).reshape(b, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.proj((y + lepe) * o), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_attention_is_norm_of_unnormalised_attention(norm):
    torch.manual_seed(0)
    b, n, c, nh = 2, 10, 16, 4
    attn = NormAttention(c, nh, norm=norm).eval()
    x = torch.randn(b, n, c)
    q, k, v = attn.qkv(x).chunk(3, -1)
    q, k, v = heads(F.elu(q) + 1, nh), heads(F.elu(k) + 1, nh), heads(v, nh)
    y = ((q @ k.transpose(-1, -2)) @ v).transpose(1, 2).reshape(b, n, c)  # no 1/√d, no denominator
    y = attn.norm(y) if norm == "layernorm" else y / y.pow(2).mean(-1, keepdim=True).sqrt()
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.proj(y), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown norm"):
        NormAttention(c, nh, norm="batchnorm")


def test_strip_attention_matches_its_quadratic_formula():
    torch.manual_seed(0)
    b, c, h, w, nh = 2, 16, 4, 8, 2
    attn = StripAttention(c, nh, sr_ratio=2, qk_ratio=0.5).eval()
    x = torch.randn(b, c, h, w)
    q = heads(attn.q(x).flatten(2).transpose(1, 2), nh)
    r = attn.sr_norm(attn.sr(x).flatten(2).transpose(1, 2))
    k, v = heads(attn.k(r), nh), heads(attn.v(r), nh)
    assert q.shape[-1] == c // 2 // nh and k.shape[2] == h * w // 4  # compressed channels, reduced tokens
    scores = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)
    y = (scores / (scores.sum(-1, keepdim=True) + 1e-6 * k.shape[2])) @ v
    y = y.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn.proj(y), rtol=1e-4, atol=1e-5)


def test_softmax_attention_with_rope_shapes():
    attn = SoftmaxAttentionRoPE(32, 2).eval()
    with torch.no_grad():
        assert attn(torch.randn(1, 32, 4, 6)).shape == (1, 32, 4, 6)


MIXERS = {
    "mlla": (lambda: MLLALinearAttention(64, 2), (2, 8, 12, 64)),
    "mala": (lambda: MagnitudeAwareLinearAttention(64, 1), (2, 64, 8, 12)),
    "softmax_rope": (lambda: SoftmaxAttentionRoPE(64, 1), (2, 64, 8, 12)),
    "norm_attention": (lambda: NormAttention(64, 2), (2, 96, 64)),
    "norm_attention_rms": (lambda: NormAttention(64, 2, norm="rmsnorm"), (2, 96, 64)),
    "strip": (lambda: StripAttention(64, 2, sr_ratio=2), (2, 64, 8, 12)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", [n for n in MIXERS if n != "softmax_rope"])
def test_low_precision_inputs_of_magnitude_100_stay_finite(name, dtype):
    """Activations ~100 (default init) drive the unnormalised φ(q)·KV and MALA's z to ~1e5-1e7, past fp16's 65504;
    the mixers keep that core in fp32, and their outputs are close to the fp32 module's."""
    torch.manual_seed(0)
    make, shape = MIXERS[name]
    mixer = make().eval()
    with torch.no_grad():
        mixer = mixer.to(dtype)
        x = (100 * torch.randn(shape)).to(dtype)
        out = mixer(x)
        reference = make().eval()
        reference.load_state_dict(mixer.state_dict())
        expected = reference.float()(x.float())
    assert out.dtype == dtype and torch.isfinite(out).all(), f"{name} in {dtype}: non-finite output"
    assert torch.isfinite(expected).all()
    if name == "mala" and dtype == torch.float16:  # its exact output exceeds fp16's range: it saturates there
        limit = torch.finfo(torch.float16).max
        assert expected.abs().max() > limit
        expected = expected.clamp(-limit, limit)
    scale = expected.abs().max()
    assert (out.float() - expected).abs().max() <= 0.05 * scale
