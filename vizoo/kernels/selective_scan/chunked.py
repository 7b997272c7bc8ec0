"""The selective scan in parallel form for PyTorch on any device: no Python loop over the sequence length.

The recurrence ``h_t = a_t h_{t-1} + b_t`` (per channel and state, ``a_t = exp(Δ_t A)``) is solved by a blocked scan:
the sequence is cut into chunks of ``CHUNK`` steps (7, 6 or 5 where that divides the length and saves the padding), and
every chunk is scanned by a loop over its positions, run on all chunks at once. A first pass from a zero state gives
each chunk's end state and total decay; the same recurrence one level up (over chunks, recursively) gives the true
state entering each chunk; a second pass reruns the chunks from those states and reads the output out. Work stays
O(L), the loop count O(CHUNK · log_CHUNK L), and no state is stored per position beyond what autograd keeps.

Layout. A sequence is chunked by a free reshape to (..., chunks, size, ...), and step t of the loops is position t of
every chunk: one Split in ONNX. With d_state n = 1 the steps are channel-first, (b, g, d/g, chunks, 1). With n > 1 they
are channel-last, (b, chunks, n, g, d/g): the steps are cut from Δ, Δ·u, B and C before anything is multiplied out to
the n states, and every product broadcasts over runs of d/g channels. Cutting the steps from the n-times larger
channel-first decays and inputs instead would move n times more data through the Splits, in products that broadcast
over runs of only one chunk count. With n = 1 channel-last gains nothing and costs transposes (onnxruntime pushes them
into every step).

Memory in training. Autograd would keep a few of the per-step tensors above, each (b, chunks, n, g, d/g) and together
O(b·d·n·L), for every scan of a model until its backward: n times the model's other activations. So with n > 1, when
a gradient is wanted, ``selective_scan_chunked`` runs through ``RecomputedScan``: its forward keeps only the inputs
(O(b·d·L)), and its backward reruns the scan with autograd on and differentiates that, a slice of the states at a
time (``state_slices``), as the Triton backward recomputes its states. Export, ``torch.compile`` and n = 1 (where the
saved steps are no larger than the inputs) take the plain differentiable path.

Numerics: decays enter only as products of factors ``exp(Δ_t A) <= 1`` (for ``A <= 0``) within a chunk or across
chunk ends, never as ``exp`` of a cumulative sum, so nothing overflows. All arithmetic is fp32. Only elementwise ops,
products and sums are used, so the path traces and exports, and ``torch.utils.flop_counter`` sees none of it
(the kernel reports its own MACs).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from vizoo.kernels.backend import is_exporting, is_traced, wants_grad
from vizoo.kernels.selective_scan.stepwise import scan_stepwise, stepwise_applies

CHUNK = 8
# softplus's in-place form takes inputs up to this: exp stays finite in fp32.
_EXP_SAFE = 80.0


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0``, along ``dim``.

    a, b: broadcastable to each other; ``dim`` >= 1, the dims after it are features. Returns h with the broadcast
    shape.
    """
    a, b = torch.broadcast_tensors(a, b)
    length = b.shape[dim]
    if length <= CHUNK:
        return torch.cat(scan_steps(a.split(1, dim), b.split(1, dim)), dim=dim)
    size = chunk_size(length)
    a, b = _steps(a, size, dim), _steps(b, size, dim)  # (..., chunks, 1, ...) each
    return _from_chunks(torch.cat(scan_steps(a, b, chunk_start_states(a, b, dim)), dim=dim + 1), length, dim)


def chunk_size(length: int) -> int:
    """The chunk size for a sequence of ``length``: CHUNK, or the largest of 7, 6 and 5 that divides the length.

    A chunk size that divides the length saves the padding and the cut after the scan (vmamba_tiny_s1l8's 14 x 14 and
    7 x 7 maps scan in chunks of 7, the 25 chunks of a 197-token Vim sequence in chunks of 5).
    """
    return next((size for size in range(CHUNK, CHUNK - 4, -1) if length % size == 0), CHUNK)


def _steps(x: torch.Tensor, size: int, dim: int) -> tuple[torch.Tensor, ...]:
    """The sequence along ``dim`` as ``size`` step views (..., chunks, 1, ...): view t holds position t of every chunk.

    One Split in ONNX. The sequence is zero-padded to whole chunks (a Concat, not a Pad: CoreML lacks Pad). The size-1
    dim is kept: squeezing it costs a Squeeze per step and an Unsqueeze per stacked result.
    """
    pad = -x.shape[dim] % size
    if pad:
        x = torch.cat([x, x.new_zeros((*x.shape[:dim], pad, *x.shape[dim + 1 :]))], dim=dim)
    return x.unflatten(dim, (-1, size)).split(1, dim=dim + 1)


def _from_chunks(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """(..., chunks, size, ...) with chunks at ``dim`` -> (..., length, ...): the padding cut off."""
    x = x.flatten(dim, dim + 1)
    return x if x.shape[dim] == length else x.narrow(dim, 0, length)


def scan_steps(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], h: torch.Tensor | None = None) -> list:
    """The states of ``h_t = a_t h_{t-1} + b_t`` over the step views ``a[t]``, ``b[t]``, from ``h`` (zero if None)."""
    states = []
    for a_t, b_t in zip(a, b):
        h = b_t if h is None else torch.addcmul(b_t, a_t, h)
        states.append(h)
    return states


def chunk_start_states(a: list[torch.Tensor], b: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The true state entering every chunk, shaped like a step (chunks at ``dim`` >= 1), from the steps ``a[t]``,
    ``b[t]``.

    Each chunk scanned from a zero state gives its end state and total decay; the recurrence over chunks (one level
    up, recursively) then carries the states across chunk ends. It runs on rank-3 views (leading dims, chunks,
    features), so ranks stay <= 5 whatever the steps' layout.
    """
    h, decay = b[0], a[0]
    for t in range(1, len(b)):
        h = torch.addcmul(b[t], a[t], h)
        decay = decay * a[t]
    carried = linear_recurrence(_rank3(decay, dim), _rank3(h, dim), dim=1).reshape(h.shape)
    chunks = carried.shape[dim]
    return torch.cat([torch.zeros_like(carried.narrow(dim, 0, 1)), carried.narrow(dim, 0, chunks - 1)], dim=dim)


def _rank3(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., chunks, ...) with chunks at ``dim`` -> (leading, chunks, features)."""
    return x.flatten(0, dim - 1).flatten(2)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) in three forms: a composite of mobile-friendly ops in export, ``exp``, ``+1``, ``log`` in place
    for CPU inference, and torch's ``F.softplus`` otherwise.

    torch's op returns x itself above x = 20 (an error under 2e-9) and is one pass over the data, but its log1p makes
    it several times slower on a CPU than the three in-place passes. Those serve fp32/fp64 inference on a CPU when no
    value passes 80 (where exp would overflow); 1 + e^x rounds to 1 below about x = -17, an absolute error under 6e-8.
    Autograd keeps torch's op, whose backward saves only x.

    The export composite is ``relu(x) - log(sigmoid(|x|))``, stable for any x (the sigmoid is in [1/2, 1]), with |x|
    formed as ``2 relu(x) - x`` so that the gradient at 0 is sigmoid(0) = 1/2 (``abs`` has gradient 0 there).
    Absolute error <= 6e-7 against float64; below about x = -17 it gives 0 rather than exp(x) < 4e-8. In ONNX it is
    Relu/Mul/Sub/Sigmoid/Log, which NNAPI runs (it lacks Softplus, and torch's thresholded softplus adds Greater/Where
    nodes that neither NNAPI nor CoreML runs); CoreML MLProgram then lacks only the Log.
    """
    if is_exporting():
        relu = torch.relu(x)
        return relu - torch.log(torch.sigmoid(2 * relu - x))
    cpu_inference = (
        x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not (x.requires_grad or is_traced())
    )
    if cpu_inference and x.numel() > 0 and x.amax() <= _EXP_SAFE:
        return x.exp().add_(1).log_()
    return F.softplus(x)


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
    """Same contract as ``selective_scan_reference``; see the module docstring for the method.

    With d_state n > 1 and a gradient wanted, the scan is recomputed in the backward (``RecomputedScan``) instead of
    kept for it; values and gradients are the same.
    """
    if recompute_in_backward(A, u, delta, B, C, D, z, delta_bias):
        return RecomputedScan.apply(delta_softplus, return_last_state, u, delta, A, B, C, D, z, delta_bias)
    if stepwise_applies(u, A) and not wants_grad(A, u, delta, B, C, D, z, delta_bias):
        read_out, last_state = scan_stepwise(u, delta, A, B, C, delta_bias, delta_softplus)
        y = skip_and_gate(read_out, u.float(), D, z).to(u.dtype)
        return (y, last_state) if return_last_state else y
    return scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def recompute_in_backward(A: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether ``RecomputedScan`` should run the scan: n > 1, some input wants a gradient, and no tracer is watching.

    With n = 1 the saved steps are no larger than the inputs and recomputing only costs time. Under export, tracing or
    ``torch.compile`` the plain path keeps the graph free of a Python autograd function.
    """
    return A.shape[1] > 1 and wants_grad(A, *tensors) and not is_traced()


def scan_chunked(
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
    """The blocked scan itself, differentiable by autograd: ``selective_scan_chunked``'s contract, always this path."""
    b, d, length = u.shape
    n, g = A.shape[1], B.shape[1]
    u32 = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = softplus(delta)
    # Ranks stay <= 5 (CoreML's limit). Padding steps have delta = 0, so a = 1 there and the state passes through.
    size = chunk_size(length)
    if n == 1:  # channel-first: steps (b, g, d/g, chunks, 1), the sequence at dim 3
        dim, A_steps = 3, A.float().unflatten(0, (g, -1)).unsqueeze(-1)  # (g, d/g, 1, 1)
        sequence = partial(torch.unflatten, dim=1, sizes=(g, -1))  # (b, d, L) -> (b, g, d/g, L)
        B_steps = _steps(B.float(), size, dim)  # (b, g, 1, chunks, 1)
    else:  # channel-last: steps (b, chunks, n, g, d/g), the sequence at dim 1
        dim, A_steps = 1, A.float().t().unflatten(1, (g, -1))  # (n, g, d/g)
        sequence = partial(_channel_last, g=g)  # (b, d, L) -> (b, L, g, d/g)
        B_steps = _state_steps(B.float(), size)  # (b, chunks, n, g, 1)
    a = [torch.exp(dt * A_steps) for dt in _steps(sequence(delta), size, dim)]
    bx = [du * B_t for du, B_t in zip(_steps(sequence(delta * u32), size, dim), B_steps)]
    states = scan_steps(a, bx, chunk_start_states(a, bx, dim))
    if n == 1:  # one product over all states: fewest nodes
        h = _from_chunks(torch.cat(states, dim=4), length, dim)  # (b, g, d/g, L)
        y = (h * C.float()).flatten(1, 2)  # (b, d, L)
        last_state = states[-1][..., -1, :].flatten(1, 2)  # (b, g, d/g, 1) -> (b, d, 1)
    else:  # a product per step, so the n-times larger states times C are never stored whole
        # The sum over the n states is n · mean: NNAPI has ReduceMean but no ReduceSum. C carries the factor n (exact
        # for a power of two, one rounding otherwise).
        ys = [(h * c).mean(2, keepdim=True) for h, c in zip(states, _state_steps(C.float() * n, size))]
        y = _from_chunks(torch.cat(ys, dim=2), length, dim).flatten(2).transpose(1, 2)  # (b, L, g, d/g) -> (b, d, L)
        last_state = states[-1][:, -1].permute(0, 2, 3, 1).flatten(1, 2)  # (b, n, g, d/g) -> (b, d, n)
    y = skip_and_gate(y, u32, D, z).to(u.dtype)
    if return_last_state:  # padding steps pass the state at L - 1 through
        return y, last_state.detach()
    return y


def skip_and_gate(y: torch.Tensor, u32: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``(y + D u) · silu(z)``, each term where given: y and u32 (b, d, L) fp32, D (d,), z (b, d, L)."""
    if D is not None:
        y = torch.addcmul(y, D.float()[:, None], u32)
    if z is not None:
        y = y * F.silu(z.float())
    return y


class RecomputedScan(torch.autograd.Function):
    """``scan_chunked`` that keeps only its inputs for the backward and reruns the scan there.

    The forward runs without autograd. ``ctx.save_for_backward`` holds u, Δ, A, B, C, D, z and the Δ bias, O(b·d·L)
    together, where autograd would hold per-step tensors totalling O(b·d·n·L) per scan until the model's backward. The
    backward reruns the scan with autograd on and differentiates it, with the read-out's gradient ``grad_y · silu(z)``
    flowing in; the read-out ``sum_n h·C`` (b, d, L) that the rerun gives is what the gate's gradient needs, so the
    skip and the gate (``skip_and_gate``) are differentiated after it.

    Both passes scan the states in slices (``state_slices``), one at a time: the n states never interact, and the
    read-out is a sum over them, so a slice of A's columns and of B's and C's states gives its part of the sum, and
    only one slice's steps and graph are alive at a time. Slicing the states keeps the steps' channel-last layout
    (slicing the channels would shorten the runs of d/g channels that every product broadcasts over).

    The scan runs in fp32 whatever the inputs' dtype, as ``scan_chunked`` computes anyway, and each gradient is cast to
    its input's dtype once at the end. With ``create_graph`` (double backward) the plain scan is rerun whole on the
    saved inputs and differentiated with a graph, so that the gradients are differentiable in turn.
    """

    @staticmethod
    def forward(ctx, delta_softplus, return_last_state, u, delta, A, B, C, D, z, delta_bias):
        u32 = u.float()
        if stepwise_applies(u, A):  # the forward keeps no graph, so the stepwise loop serves it
            read_out, last_state = scan_stepwise(u32, delta, A, B, C, delta_bias, delta_softplus)
        else:
            rest = (None, None, delta_bias, delta_softplus, True)  # D and z are applied to the sum
            parts = [scan_chunked(u32, delta, A[:, s], B[:, :, s], C[:, :, s], *rest) for s in state_slices(u, A)]
            read_out = _sum([y for y, _ in parts])  # (b, d, L) fp32
            last_state = torch.cat([h for _, h in parts], dim=2)  # (b, d, n)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        y = skip_and_gate(read_out, u32, D, z).to(u.dtype)
        if not return_last_state:
            return y
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y, *unused_grad_last_state):
        saved = dict(zip(_INPUTS, ctx.saved_tensors))
        want = dict(zip(_INPUTS, ctx.needs_input_grad[2:]))
        if torch.is_grad_enabled():  # create_graph: differentiate the whole plain scan on the saved inputs
            return None, None, *_plain_grads(saved, want, grad_y, ctx.delta_softplus)
        grad_y = grad_y.float()
        # The read-out's gradient (b, d, L), as autograd gives it for skip_and_gate's product with the gate.
        grad_read_out = grad_y if saved["z"] is None else grad_y * F.silu(saved["z"].float())
        grads, sliced, read_out = {}, {"A": [], "B": [], "C": []}, None
        with torch.enable_grad():
            scan = {
                name: _leaf(saved[name], want[name]) for name in ("u", "delta", "delta_bias") if saved[name] is not None
            }
            rerun = any(want[name] for name in ("u", "delta", "A", "B", "C", "delta_bias"))
            for part in state_slices(saved["u"], saved["A"]) if rerun or want["z"] else ():
                for name, dim in (("A", 1), ("B", 2), ("C", 2)):
                    scan[name] = _leaf(saved[name].narrow(dim, part.start, part.stop - part.start), want[name])
                args = (scan[name] for name in ("u", "delta", "A", "B", "C"))
                y = scan_chunked(*args, None, None, scan.get("delta_bias"), ctx.delta_softplus)
                if want["z"]:  # the gate's gradient needs the read-out: summed here instead of kept from the forward
                    read_out = y.detach() if read_out is None else read_out + y.detach()
                for name, grad in (_grads(y, scan, grad_read_out, want) if rerun else {}).items():
                    if name in sliced:
                        sliced[name].append(grad)
                    elif grad is not None:
                        grads[name] = grad if name not in grads else grads[name] + grad
            # The skip and the gate: u's direct part, D and z.
            tail = {name: _leaf(saved[name], want[name]) for name in ("u", "D", "z") if saved[name] is not None}
            if any(want[name] for name in tail):
                read_out = torch.zeros_like(tail["u"]) if read_out is None else read_out  # enters only z's gradient
                y = skip_and_gate(read_out, tail["u"], tail.get("D"), tail.get("z"))
                for name, grad in _grads(y, tail, grad_y, want).items():
                    if grad is not None:
                        grads[name] = grad if name not in grads else grads[name] + grad
        for name, parts in sliced.items():
            grads[name] = torch.cat(parts, dim=1 if name == "A" else 2) if parts else None
        return None, None, *(None if grads.get(name) is None else grads[name].to(saved[name].dtype) for name in _INPUTS)


# selective_scan's tensor inputs, in order.
_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# The most elements that one slice of the n > 1 scan gives a tensor of the state's size, (b, chunks, n, g, d/g).
SLICE_ELEMENTS = 1 << 22


def state_slices(u: torch.Tensor, A: torch.Tensor) -> list[slice]:
    """Slices of the n states, of about equal width, that keep a state-sized tensor (b, d, width, L) of each within
    ``SLICE_ELEMENTS``."""
    (b, d, length), n = u.shape, A.shape[1]
    count = min(n, max(1, -(-b * d * n * length // SLICE_ELEMENTS)))
    width = -(-n // count)
    return [slice(start, min(start + width, n)) for start in range(0, n, width)]


def _sum(parts: list[torch.Tensor]) -> torch.Tensor:
    return sum(parts[1:], parts[0])


def _grads(y: torch.Tensor, inputs: dict, grad_y: torch.Tensor, want: dict, create_graph: bool = False) -> dict:
    """The gradients of ``y`` (with ``grad_y`` flowing in) with respect to the wanted ``inputs``, by name."""
    names = [name for name in inputs if want.get(name)]
    grads = torch.autograd.grad(
        y, [inputs[name] for name in names], grad_y, create_graph=create_graph, allow_unused=True
    )
    return dict(zip(names, grads))


def _leaf(t: torch.Tensor, want: bool) -> torch.Tensor:
    """A saved tensor as an fp32 leaf of the backward's rerun."""
    return t.detach().float().requires_grad_(want)


def _plain_grads(saved: dict, want: dict, grad_y: torch.Tensor, delta_softplus: bool) -> list:
    """The gradients of the plain scan on the saved inputs, with a graph of their own for a double backward. Each input
    enters through its own view, so that one tensor passed as two inputs (B and C, say) gets a gradient per use."""
    inputs = {name: None if saved[name] is None else saved[name].view_as(saved[name]) for name in _INPUTS}
    y = scan_chunked(*inputs.values(), delta_softplus)
    grads = _grads(y, inputs, grad_y, want, create_graph=True)
    return [grads.get(name) for name in _INPUTS]


def _channel_last(x: torch.Tensor, g: int) -> torch.Tensor:
    """(b, d, L) -> channel-last (b, L, g, d/g) in g groups; one 2-D Transpose in ONNX."""
    return x.transpose(1, 2).unflatten(-1, (g, -1))


def _state_steps(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """B or C (b, g, n, L) -> ``size`` steps (b, chunks, n, g, 1) that broadcast over each group's channels."""
    return [step.movedim(2, -1) for step in _steps(x.permute(0, 3, 2, 1), size, 1)]
