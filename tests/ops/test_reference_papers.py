"""The recurrent reference against the papers' update rules, written independently here: each loop takes its
gradients with autograd on the bias's loss (not the closed forms the reference uses) or states the closed-form
matrix update of the paper, and is compared with `recurrent_reference` in float64."""
import pytest
import torch

from miras.ops import MemoryState, recurrent_reference
from miras.ops.inputs import random_inputs
from miras.space import MirasSpec, get_preset
from miras.space import bias as biases
from miras.space import retention as retentions
from miras.space.memory import matrix
from miras.space.algorithm import GD


def in_chunk_weights(retention, A, start):
    """MIRAS section 5.4, written out here: inside a chunk Moneta keeps the chunk start's normalizer
    (A_t (r / ||A_s||_q)^gamma, gamma = q - 2 for form "paper", 1 for "sphere"; ||.||_q^q smoothed as
    sum (a^2 + eps)^(q/2)) and Memora the linear map c softmax(A_s) + c (D - rowmean D) / n_in with
    D = A_t - A_s; decays read A_t itself."""
    if isinstance(retention, retentions.LqNormalization):
        norm = {n: (a * a + retention.eps).pow(retention.q / 2).sum((-2, -1), keepdim=True) ** (1 / retention.q)
                for n, a in start.items()}
        gamma = retention.q - 2 if retention.form == "paper" else 1.0
        return {n: A[n] * (retention.r(*A[n].shape[-2:]) / norm[n]) ** gamma for n in A}
    if isinstance(retention, retentions.KLSoftmax):
        D = {n: A[n] - start[n] for n in A}
        c = {n: retention.c(D[n].shape[-1]) for n in A}
        return {n: c[n] * torch.softmax(start[n], -1) + c[n] * (D[n] - D[n].mean(-1, keepdim=True)) / D[n].shape[-1]
                for n in A}
    return retention.boundary(A)


def paper_loop(spec, q, k, v, gates, state):
    """Per token: g = autograd grad of the loss at the chunk-start memory; S = beta S - eta g; A = alpha A + S
    (A = W0 + alpha (A - W0) + S for a retention toward the initial state W0, the state's prior);
    y = M_{W_t}(q) with W_t = boundary(A) at a chunk's last token, `in_chunk_weights` before it; with TTT's token
    weights (its code: token_idx = 1/i) W_t = A_s + (A_t - A_s) / i at the chunk's i-th token, A = W_t at its last.
    q, k, v [B, T, H, d]; state: MemoryState with A (and S)."""
    memory, bias, boundary = spec.memory, spec.bias, spec.retention.boundary
    A, W0 = dict(state.A), state.prior
    S = dict(state.S) if state.S is not None else None
    ys = []
    for t in range(q.shape[1]):
        if t % spec.chunk_size == 0:
            anchor = {n: w.detach() for n, w in boundary(A).items()}
            start = dict(A)
        W = {n: w.clone().requires_grad_() for n, w in anchor.items()}
        own = {n: gates[n][:, t, :, None] for n in bias.gates}
        with torch.enable_grad():
            pred = memory(W, k[:, t, :, None])
            if spec.per_channel("lr"):       # channel-wise eta: the loss' gradient at pred, scaled per channel, back
                dpred = torch.autograd.grad(bias.loss(pred, v[:, t, :, None], own).sum(), pred, retain_graph=True)[0]
                g = dict(zip(W, torch.autograd.grad(pred, list(W.values()), gates["lr"][:, t, :, None] * dpred)))
            else:
                loss = bias.loss(pred, v[:, t, :, None], own).sum()
                g = dict(zip(W, torch.autograd.grad(loss, list(W.values()))))
        eta = 1.0 if spec.per_channel("lr") else gates["lr"][:, t, :, None, None]
        inner = getattr(memory, "layers", list(A))   # TTT's LayerNorm gain and shift are not trained in the loop
        step = {n: -eta * g[n] if n in inner else torch.zeros_like(A[n]) for n in A}
        if S is not None:
            S = step = {n: gates["beta"][:, t, :, None, None] * S[n] + step[n] for n in A}
        alpha = gates["log_alpha"][:, t, :, None, None].exp() if "log_alpha" in gates else 1.0
        if getattr(spec.retention, "toward", "zero") == "init":     # forgetting toward the initial state W0
            A = {n: W0[n] + alpha * (A[n] - W0[n]) + step[n] for n in A}
        else:
            A = {n: alpha * A[n] + step[n] for n in A}
        last = (t + 1) % spec.chunk_size == 0
        if getattr(spec.algorithm, "token_weights", False):
            i = t % spec.chunk_size + 1
            W = {n: start[n] + (A[n] - start[n]) / i for n in A}
            A = W if last else A
        else:
            W = boundary(A) if last else in_chunk_weights(spec.retention, A, start)
        ys.append(memory(W, q[:, t, :, None])[:, :, 0])
    return torch.stack(ys, 1)


CASES = {"titans-lmm b=1": ("titans-lmm", 1), "titans-lmm b=4": ("titans-lmm", 4), "moneta b=1": ("moneta", 1),
         "moneta b=4": ("moneta", 4), "yaad b=1": ("yaad", 1), "memora b=1": ("memora", 1),
         "memora b=4": ("memora", 4), "ttt-linear b=16": ("ttt-linear", 16), "ttt-mlp b=16": ("ttt-mlp", 16)}


@pytest.mark.parametrize("case", list(CASES))
def test_reference_follows_the_papers_update(case):
    name, chunk = CASES[case]
    spec = get_preset(name).spec.with_chunk_size(chunk)
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=20, heads=2, d_k=4)
    with torch.no_grad():
        expect = paper_loop(spec, q, k, v, gates, state)
        y, _ = recurrent_reference(spec, q, k, v, gates, state)
    torch.testing.assert_close(y, expect, rtol=1e-10, atol=1e-12)


def test_gated_deltanet_decays_before_the_delta_step():
    """W_t = alpha_t W_{t-1} (I - beta_t k k^T) + beta_t v k^T (Gated DeltaNet, closed matrix form)."""
    spec = get_preset("gated-deltanet").spec
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=9, heads=2, d_k=3, d_v=4)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    W, eye = state.A["W1"], torch.eye(3, dtype=torch.float64)
    for t in range(9):
        a, b = gates["log_alpha"][:, t, :, None, None].exp(), gates["lr"][:, t, :, None, None]
        kk = k[:, t, :, :, None] @ k[:, t, :, None, :]
        W = a * W @ (eye - b * kk) + b * v[:, t, :, :, None] @ k[:, t, :, None, :]
        torch.testing.assert_close(y[:, t], (W @ q[:, t, :, :, None])[..., 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.A["W1"], W, rtol=1e-12, atol=1e-12)


def test_mamba2_decays_by_exp_dt_a_and_writes_dt_x():
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t: q = C, k = B, v = x, lr = dt, log_alpha = dt A."""
    spec = get_preset("mamba2").spec
    gen = torch.Generator().manual_seed(3)
    B_, C_, x = (torch.randn(1, 7, 2, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    dt = torch.nn.functional.softplus(torch.randn(1, 7, 2, generator=gen, dtype=torch.float64))
    A = -torch.tensor([0.5, 2.0], dtype=torch.float64)
    y, _ = recurrent_reference(spec, C_, B_, x, {"lr": dt, "log_alpha": dt * A})
    h = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    for t in range(7):
        h = (dt[:, t] * A).exp()[..., None, None] * h + dt[:, t, :, None, None] * x[:, t, :, :, None] @ B_[:, t, :, None]
        torch.testing.assert_close(y[:, t], (h @ C_[:, t, :, :, None])[..., 0], rtol=1e-12, atol=1e-12)


BIASES = [biases.DotProduct(), biases.L2(), biases.Lp(p=3.0), biases.Huber(), biases.ValueShiftRobustL2(0.2)]
GATES = [retentions.NoRetention(), retentions.Decay(), retentions.Decay(per_channel=True),
         retentions.LqNormalization(q=4.0), retentions.KLSoftmax(), retentions.ElasticNet(lam=0.01)]


def _gradcheck(spec):
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=3, heads=1, d_k=2, requires_grad=True)
    names = list(gates)

    def run(q, k, v, W1, *gate_values):
        return recurrent_reference(spec, q, k, v, dict(zip(names, gate_values)), MemoryState({"W1": W1}))[0]

    assert torch.autograd.gradcheck(run, (q, k, v, state.A["W1"], *gates.values()))


@pytest.mark.parametrize("bias", BIASES, ids=lambda b: b.name)
def test_gradcheck_every_bias(bias):
    _gradcheck(MirasSpec(matrix(), bias, retentions.Decay(), GD(), chunk_size=2))


@pytest.mark.parametrize("gate", GATES, ids=lambda g: f"{g.name}{'-channel' if g.per_channel else ''}")
def test_gradcheck_every_retention_gate(gate):
    _gradcheck(MirasSpec(matrix(), biases.L2(), gate, GD(), chunk_size=2))
