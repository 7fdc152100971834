"""Comparison helpers shared by the op tests."""


def rel_err(a, b) -> float:
    """Relative RMS error of a against b (in float64)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def rel_errors(got: dict, want: dict) -> dict:
    """name -> rel_err(got[name], want[name]); the two dicts must have the same names."""
    assert got.keys() == want.keys()
    return {n: rel_err(got[n], want[n]) for n in want}


def assert_engine_equals_reference(spec, seqlen: int, tol: float = 1e-9, **inputs) -> None:
    """The mini-batch engine against the recurrent reference on random_inputs(spec, seqlen, ...): outputs, the final
    accumulator and the gradients (wrt q, k, v, the gates, the start state) of a random projection of both, each
    within tol relative RMS (float64)."""
    import torch

    from miras.ops import recurrent_reference
    from miras.ops.inputs import random_inputs
    from miras.ops.minibatch import chunk_minibatch
    q, k, v, gates, state = random_inputs(spec, seqlen=seqlen, requires_grad=True, **inputs)
    leaves = [q, k, v, *gates.values(), *state.A.values(), *(state.S.values() if state.S is not None else ())]
    outs = []
    for fn in (recurrent_reference, chunk_minibatch):
        y, final = fn(spec, q, k, v, gates, state)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
        loss = (y * w).sum() + sum(a.sum() for a in final.A.values())
        outs.append((y.detach(), {n: a.detach() for n, a in final.A.items()}, torch.autograd.grad(loss, leaves)))
    (y0, A0, g0), (y1, A1, g1) = outs
    assert y0.dtype == torch.float64
    assert rel_err(y1, y0) <= tol
    for n in A0:
        assert rel_err(A1[n], A0[n]) <= tol, n
    for i, (a, b) in enumerate(zip(g1, g0)):
        assert rel_err(a, b) <= tol, i


def engine_and_reference(spec, q, k, v, gates, state, leaves, **kwargs) -> list[tuple]:
    """The recurrent reference and the mini-batch engine on the same inputs (kwargs: e.g. token_offsets): for each,
    (y, the final state's tensors, its offset, the gradients wrt `leaves` of a random projection of y and of the
    final state's A; None where a leaf is unused)."""
    import torch

    from miras.ops import recurrent_reference
    from miras.ops.minibatch import chunk_minibatch
    outs = []
    for fn in (recurrent_reference, chunk_minibatch):
        y, final = fn(spec, q, k, v, gates, state, **kwargs)
        gen = torch.Generator().manual_seed(7)
        loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (y, *final.A.values()))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        outs.append((y.detach(), {n: a.detach() for n, a in final.tensors().items()}, final.offset, grads))
    return outs


def assert_same_results(outs: list[tuple], tol: float = 1e-10, grad_tol: float = 1e-9) -> None:
    """engine_and_reference's two results equal: outputs, every state tensor and offset within tol, gradients within
    grad_tol (relative RMS); a gradient may be None on both sides only (an unused leaf, e.g. at T = 0)."""
    (y0, s0, off0, g0), (y1, s1, off1, g1) = outs
    assert off0 == off1 and s0.keys() == s1.keys()
    assert rel_err(y1, y0) < tol
    for n in s0:
        assert rel_err(s1[n], s0[n]) < tol, n
    for i, (a, b) in enumerate(zip(g1, g0)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert rel_err(a, b) < grad_tol, i
