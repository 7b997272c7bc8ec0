"""The selective scan in parallel form for PyTorch on any device: no Python loop over the sequence length.

The recurrence ``h_t = a_t h_{t-1} + b_t`` (per channel and state, ``a_t = exp(Δ_t A)``) is solved by a blocked scan:
the sequence is cut into chunks of ``CHUNK`` steps (7, 6 or 5 where that divides the length and saves the padding), and
every chunk is scanned by a loop over its positions, run on all chunks at once. A first pass from a zero state gives
each chunk's end state and total decay; the same recurrence one level up (over chunks, recursively) gives the true
state entering each chunk; a second pass reruns the chunks from those states and reads the output out. Work stays
O(L), the loop count O(CHUNK · log_CHUNK L), and no state is stored per position beyond what autograd keeps. A
sequence is chunked by a free reshape to (..., chunks, size), and each step of the loops takes one position of every
chunk (a strided slice). In ONNX that is one Split on the last axis. Chunking with a transpose instead cost
onnxruntime a Transpose per scan and recursion level, and made vmamba_tiny_s1l8 about 30% slower there (about 20%
slower in eager PyTorch).

Numerics: decays enter only as products of factors ``exp(Δ_t A) <= 1`` (for ``A <= 0``) within a chunk or across
chunk ends, never as ``exp`` of a cumulative sum, so nothing overflows. All arithmetic is fp32. Only elementwise ops,
products and sums are used, so the path traces and exports, and ``torch.utils.flop_counter`` sees none of it
(the kernel reports its own MACs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 8


def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0``, along the last dim.

    a, b: (..., L), broadcastable to each other. Returns h (..., L) with the broadcast shape.
    """
    a, b = torch.broadcast_tensors(a, b)
    length = b.shape[-1]
    if length <= CHUNK:
        return torch.cat(_scan_steps(_steps(a), _steps(b)), dim=-1)
    size = chunk_size(length)
    a, b = _steps(_to_chunks(a, size)), _steps(_to_chunks(b, size))
    return _from_chunks(torch.cat(_scan_steps(a, b, _chunk_start_states(a, b)), dim=-1), length)


def chunk_size(length: int) -> int:
    """The chunk size for a sequence of ``length``: CHUNK, or the largest of 7, 6 and 5 that divides the length.

    A chunk size that divides the length saves the padding and the cut after the scan (vmamba_tiny_s1l8's 14 x 14 and
    7 x 7 maps scan in chunks of 7, the 25 chunks of a 197-token Vim sequence in chunks of 5).
    """
    return next((size for size in range(CHUNK, CHUNK - 4, -1) if length % size == 0), CHUNK)


def _to_chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., L) -> (..., ceil(L / size), size), zero-padded at the end."""
    x = _pad_to_chunks(x, size)
    return x.unflatten(-1, (x.shape[-1] // size, size))


def _pad_to_chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., L) -> (..., size · ceil(L / size)), zero-padded at the end."""
    pad = -x.shape[-1] % size
    return _shift_in_zeros(x, pad, at_end=True) if pad else x


def _shift_in_zeros(x: torch.Tensor, count: int, at_end: bool) -> torch.Tensor:
    """x with ``count`` zeros appended (or prepended) on the last dim.

    Written as a Concat, not a Pad, in ONNX: CoreML lacks Pad.
    """
    zeros = x.new_zeros((*x.shape[:-1], count))
    return torch.cat([x, zeros] if at_end else [zeros, x], dim=-1)


def _from_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """(..., chunks, size) -> (..., length): the padding cut off."""
    x = x.flatten(-2)
    return x if x.shape[-1] == length else x[..., :length]


def _steps(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The positions of ``x`` (..., K) as K views (..., 1); one Split in ONNX.

    The size-1 dim is kept: squeezing it (``unbind``) costs a Squeeze per step and an Unsqueeze per stacked result,
    about 1,300 of vmamba_tiny_s1l8's nodes.
    """
    return x.split(1, dim=-1)


def _scan_steps(
    a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], h: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The states of ``h_t = a_t h_{t-1} + b_t`` over the step views from ``_steps``, from ``h`` (zero if None)."""
    states = []
    for a_t, b_t in zip(a, b):
        h = b_t if h is None else torch.addcmul(b_t, a_t, h)
        states.append(h)
    return states


def _chunk_start_states(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The true state entering every chunk, (..., chunks, 1), from the step views ``a[t]``, ``b[t]`` (..., chunks, 1).

    Each chunk scanned from a zero state gives its end state and total decay; the recurrence over chunks (one level
    up, recursively) then carries the states across chunk boundaries.
    """
    h, decay = b[0], a[0]
    for t in range(1, len(b)):
        h = torch.addcmul(b[t], a[t], h)
        decay = decay * a[t]
    carried = linear_recurrence(decay.squeeze(-1), h.squeeze(-1))
    return _shift_in_zeros(carried[..., :-1], 1, at_end=False).unsqueeze(-1)


def input_term(du: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Δ·u (b, d, l) times B (b, g, n, l), each group's B broadcast over its d/g channels: (b, d, n, l).

    Broadcast, not repeated: ``repeat_interleave`` exports an Expand, which NNAPI lacks. Ranks stay <= 5 (CoreML).
    """
    d, g = du.shape[1], B.shape[1]
    return (du.unflatten(1, (g, d // g)).unsqueeze(3) * B.unsqueeze(2)).flatten(1, 2)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) as ``relu(x) + log(1 + exp(x - 2 relu(x)))`` (the exp argument is -|x| <= 0): stable for any x.

    In ONNX this is Relu/Mul/Sub/Exp/Add/Log, which NNAPI runs (it lacks Softplus, and torch's thresholded softplus
    adds Greater/Where nodes that neither NNAPI nor CoreML runs); CoreML MLProgram then lacks only the Log.
    """
    relu = torch.relu(x)
    return relu + torch.log1p(torch.exp(x - 2 * relu))


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``selective_scan_reference``; see the module docstring for the method."""
    b, d, length = u.shape
    n = A.shape[1]
    g = B.shape[1]
    u32 = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = softplus(delta)
    # Every tensor stays at rank <= 5 (CoreML's limit): decays and inputs are (b, d, n, chunks, size), with B
    # broadcast over each group's d/g channels once, when the input term is formed. Shapes are spelled with
    # unflatten/flatten, never view(b, ...), so a symbolic batch size exports cleanly.
    # Padding steps have delta = 0, so a = 1 there and the state passes through unchanged.
    size = chunk_size(length)
    decays = torch.exp(_to_chunks(delta, size).unsqueeze(2) * A.float()[:, :, None, None])
    a = _steps(decays)  # (b, d, n, chunks, 1) each
    # padded before the product: padding the n-times larger product cost vim_tiny 5% of its onnxruntime time
    inputs = input_term(_pad_to_chunks(delta * u32, size), _pad_to_chunks(B.float(), size))
    bx = _steps(inputs.unflatten(-1, (-1, size)))  # (b, d, n, chunks, 1) each
    states = _scan_steps(a, bx, _chunk_start_states(a, bx))  # size x (b, d, n, chunks, 1)
    if n == 1:  # one product over all states: fewest nodes
        h = _from_chunks(torch.cat(states, dim=-1), length).squeeze(2).unflatten(1, (g, d // g))  # (b, g, d/g, l)
        y = (h * C.float()).flatten(1, 2)
    else:  # a product per step, so the states times C are never stored whole (30% less eager time at n = 16)
        # The sum over the n states is n · mean: NNAPI has ReduceMean but no ReduceSum. C carries the factor n (exact
        # for a power of two, one rounding otherwise).
        ys = []
        c_steps = _steps(_to_chunks(C.float() * n, size))  # (b, g, n, chunks, 1) each
        for h, c in zip(states, c_steps):  # h (b, d, n, chunks, 1)
            h_groups = h.flatten(-2).unflatten(1, (g, d // g))  # (b, g, d/g, n, chunks)
            ys.append((h_groups * c.flatten(-2).unsqueeze(2)).mean(3))
        y = _from_chunks(torch.stack(ys, dim=-1), length).flatten(1, 2)  # (b, g, d/g, chunks, size) -> (b, d, l)
    if D is not None:
        y = torch.addcmul(y, D.float()[:, None], u32)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    if return_last_state:
        return y, states[-1][..., -1, 0].detach()  # padding steps pass the state at l - 1 through
    return y
