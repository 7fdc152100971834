"""MirasSpec: one choice per axis of the design space, plus the chunk (mini-batch) size."""
from __future__ import annotations

from dataclasses import dataclass, replace

from . import bias as biases
from . import memory as memories
from . import algorithm as algorithms
from . import retention as retentions
from ..errors import require

Memory = memories.MLPMemory | memories.NonParametric
Bias = biases.DotProduct | biases.L2 | biases.Lp | biases.Huber | biases.ValueShiftRobustL2 | biases.Omega
Retention = (retentions.NoRetention | retentions.Decay | retentions.LqNormalization
             | retentions.KLSoftmax | retentions.ElasticNet | retentions.RowNorm)
Algorithm = algorithms.GD | algorithms.Momentum | algorithms.Muon | algorithms.Delta | algorithms.NonParametric


@dataclass(frozen=True)
class MirasSpec:
    """A point of the MIRAS design space.

    chunk_size b: tokens of one chunk take their gradient at the memory left by the previous
    chunk (b = 1 is fully online). It is a model hyperparameter whenever the gradient depends on
    the memory; `chunk_invariant` says when it does not (any b gives the same function).
    """

    memory: Memory
    bias: Bias
    retention: Retention
    algorithm: Algorithm
    chunk_size: int = 1

    def __post_init__(self):
        m, b, r, a = self.memory, self.bias, self.retention, self.algorithm
        require(isinstance(self.chunk_size, int) and self.chunk_size >= 1, "chunk_size",
                self.chunk_size, "an integer >= 1", "1 is fully online; the papers use 16 or 64")
        nonparam = isinstance(m, memories.NonParametric)
        require(nonparam == isinstance(a, algorithms.NonParametric), "algorithm", a.name,
                "'attention' exactly when memory is non-parametric",
                "pair NonParametric memory with the NonParametric algorithm")
        if nonparam:
            require(isinstance(r, retentions.NoRetention), "retention", r.name, "'none' for attention",
                    "use a sliding window in the layer instead of a retention gate")
        if isinstance(b, biases.Omega):
            require(not isinstance(a, (algorithms.Delta, algorithms.NonParametric)), "algorithm", a.name,
                    "'gd', 'momentum' or 'muon' with the Omega bias (its step sums the window's gradients at the "
                    "anchor)", "use GD(), Momentum() or Muon(), or the 'l2' bias with the exact delta rule")
            require(not getattr(a, "channel_lr", False), "algorithm.channel_lr", True,
                    "False with the Omega bias (a window's gradients come from tokens other than the step's)",
                    "use a scalar step size")
        if isinstance(a, algorithms.Delta):
            require(m.is_matrix, "memory", m.describe(), "a matrix memory for the exact delta rule",
                    "use memories.matrix() or the GD algorithm for deep memories")
            require(isinstance(b, biases.L2), "bias", b.name, "'l2' for the exact delta rule",
                    "the delta rule is the exact step of the L2 loss")
            require(isinstance(r, (retentions.NoRetention, retentions.Decay)), "retention", r.name,
                    "'none' or 'decay' (scalar or per-channel: KDA) for the exact delta rule",
                    "use the GD algorithm for other retention gates")
        if getattr(a, "weighted", False):
            field, value = ("algorithm.token_weights", True) if a.token_weights else ("algorithm.reads", a.reads)
            require(isinstance(r, (retentions.NoRetention, retentions.RowNorm)), field, value,
                    f"only with retention 'none' or 'rownorm', not {r.name!r} (TTT's and LaCT's rules define no "
                    "decay or boundary map)", "set retention to 'none' ('rownorm' for LaCT) or drop the weighted reads")
        if isinstance(r, retentions.RowNorm):
            require(getattr(a, "weighted", False), "retention", r.name,
                    "'rownorm' only with GD(reads='chunk-start') or GD(token_weights=True) (it normalizes the state "
                    "a chunk leaves)", "use GD(reads='chunk-start'), as LaCT does")
            require(not m.is_matrix, "memory", m.describe(),
                    "a deep memory with 'rownorm' (a matrix memory starts at W0 = 0: row norms 0 would keep it at 0)",
                    "use an MLP memory, e.g. MLPMemory(activation='swiglu', residual=False, norm=False)")
        if isinstance(a, algorithms.Muon):
            require(not getattr(m, "norm_affine", False), "memory.norm_affine", True,
                    "False with Muon (Newton-Schulz orthogonalizes the memory's weight matrices; the LayerNorm's gain "
                    "and shift are vectors)", "use norm_affine=False, or the GD algorithm (TTT)")
        if getattr(m, "norm_affine", False):
            require(isinstance(r, retentions.NoRetention), "retention", r.name,
                    "'none' with memory.norm_affine (a decay or boundary would move the LayerNorm's gain and shift)",
                    "use norm_affine=False with a retention gate")
        if retentions.decays_toward_prior(r):
            require(type(a) in (algorithms.GD, algorithms.Momentum), "retention.toward", "init",
                    f"'zero' with the {a.name!r} algorithm ('init' runs on the mini-batch GD / momentum engine)",
                    "use GD() or Momentum(), or toward='zero'")
        if getattr(r, "per_channel", False):
            require(m.is_matrix, "retention.per_channel", True, "only with a matrix memory",
                    "use a scalar decay for deep memories")

    @property
    def gates(self) -> tuple[str, ...]:
        """The data-dependent gate tensors the recurrence reads (each a Gate record of registry.GATES), each
        [B, T, H], or [B, T, H, d_k] where `per_channel(name)`: the step size, then the retention's, the rest of
        the algorithm's, the bias' and the memory's own gates."""
        if isinstance(self.algorithm, algorithms.NonParametric):
            return ()
        a = self.algorithm.gates
        names = (*a[:1], *self.retention.gates, *a[1:], *self.bias.gates, *self.memory.gates)
        return tuple(dict.fromkeys(names))

    def per_channel(self, gate: str) -> bool:
        """Whether the gate has one value per channel (MIRAS section 5.4's channel-wise gates): a per-channel
        retention's gates (key channels), a channel-wise step size (`channel_lr`) and Huber threshold
        (`channel_delta`), both over the memory's output channels."""
        return ((gate in self.retention.gates and self.retention.per_channel)
                or (gate == "lr" and getattr(self.algorithm, "channel_lr", False))
                or (gate in self.bias.gates and getattr(self.bias, "channel_delta", False)))

    def gate_shape(self, gate: str, B: int, T: int, H: int, d_k: int, d_v: int) -> tuple[int, ...]:
        """The gate tensor's shape: [B, T, H], or [B, T, H, d_k] per key channel, [B, T, H, d_v] per output channel."""
        if not self.per_channel(gate):
            return (B, T, H)
        return (B, T, H, d_k if gate in self.retention.gates else d_v)

    @property
    def chunk_invariant(self) -> bool:
        """True when the chunk size does not change the function (an exact chunked form exists)."""
        return (isinstance(self.algorithm, (algorithms.Delta, algorithms.NonParametric))
                or (isinstance(self.bias, biases.DotProduct) and self.retention.identity_boundary
                    and not getattr(self.algorithm, "weighted", False)))

    def with_chunk_size(self, chunk_size: int) -> "MirasSpec":
        return replace(self, chunk_size=chunk_size)

    def axes(self) -> dict[str, str]:
        return {"memory": self.memory.describe(), "bias": self.bias.describe(),
                "retention": self.retention.describe(), "algorithm": self.algorithm.describe()}

    def __str__(self) -> str:
        ax = self.axes()
        return (f"MirasSpec(memory={ax['memory']}, bias={ax['bias']}, retention={ax['retention']}, "
                f"algorithm={ax['algorithm']}, chunk_size={self.chunk_size})")
