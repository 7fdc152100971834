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



def run_both(spec, q, k, v, gates, state, grads: bool = True, extra: dict | None = None, fast=None,
             **kwargs) -> list[dict]:
    """The recurrent reference and the mini-batch engine (or `fast`, a function with chunk_minibatch's arguments) on
    the same inputs (kwargs: e.g. token_offsets), each as a
    dict: "y", the final state's tensors, "offset" (a float64 scalar tensor) and, with grads, "d<name>": the gradients of a random projection
    of y and of the final state with respect to q, k, v, every gate, every start tensor and the `extra` leaves
    (name -> tensor; zeros where a leaf is unused). The projections are drawn in float64 whatever the dtype."""
    import torch

    from miras.ops import recurrent_reference
    from miras.ops.minibatch import chunk_minibatch
    leaves = {"q": q, "k": k, "v": v, **{f"gates.{n}": g for n, g in gates.items()}, **state.tensors(), **(extra or {})}
    out = []
    for fn in (recurrent_reference, fast or chunk_minibatch):
        y, final = fn(spec, q, k, v, gates, state, **kwargs)
        res = {"y": y, **final.tensors()}
        if grads:
            gen = torch.Generator().manual_seed(7)
            loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum()
                       for t in res.values())
            grad = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
            res.update({f"d{n}": g for n, g in zip(leaves, grad)})
        out.append({**res, "offset": torch.tensor(float(final.offset), dtype=torch.float64)})
    return out


def assert_same(outs: list[dict], tol: float = 1e-10, grad_tol: float = 1e-9) -> None:
    """run_both's two results equal: the same keys, outputs, offset and state within tol, gradients within grad_tol
    (relative RMS)."""
    ref, fast = outs
    assert ref.keys() == fast.keys()
    for key in ref:
        assert rel_err(fast[key], ref[key]) < (grad_tol if key.startswith("d") else tol), key
