"""MirasConfig: one language model = a preset (or a pattern of mixers) + sizes. Plain data, validated."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from ..space import MirasSpec, get_preset
from ..errors import require
from ..space.tables import merge_spec, spec_from_dict, spec_to_dict

VERSION = "0.1.0"                 # miras.__version__, written next to every saved model config
MIXERS = ("attention", "swa", "memory", "mamba2", "ttt", "memory+swa", "titans-mal", "titans-mag", "titans-mac")


@dataclass
class MirasConfig:
    """The language model: embedding -> n_layers x (pre-norm mixer + pre-norm SwiGLU) -> norm -> tied head.

    preset: the memory spec of every "memory"-like mixer and the block around it (see `miras presets`).
    spec: changes to the preset's spec, as tables per axis (miras/space/tables.py), e.g. {"bias": "huber",
        "retention": {"q": 3}}: any point of the design space in the preset's block. to_dict() writes the
        whole resolved spec, so a saved config names every parameter of its model.
    layer_pattern: mixer names repeated cyclically over the layers (e.g. ["memory", "memory", "swa"]);
        None = the preset's own block.
    window: sliding-window size of "swa" / hybrid attention. segment: Titans MAC segment length.
    persistent_tokens: Titans persistent memory, N_p learnable tokens before every sequence: every attention layer
        attends to N_p learnable key/value pairs, and the memory of a "titans-mag" / "titans-mal" mixer reads N_p
        learnable tokens before the sequence. None (the default) = the preset's: 4 for titans-mac / -mag / -mal,
        0 otherwise.
    chunk_size: override of the preset's memory chunk size (None keeps it).
    lr_max: the bound on the memory's inner step, eta_t = lr_max sigmoid(.) (None: the preset's; 1.0 for matrix
        memories, 0.1 for deep ones, 0.01 for moneta; docs/models.md). Not for the TTT presets, whose step is
        eta_base sigmoid(.) with TTT's own gate initialization.
    attention_conv: kernel of a depthwise causal convolution on q, k and v in the attention of the "attention",
        "swa" and hybrid mixers (Primer's; 0, the default: plain attention). It lets a 2-layer transformer learn
        recall in as few steps as the recurrent blocks with their short convolution (docs/design-space.md).
    """

    preset: str = "gated-deltanet"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    heads: int = 2
    head_dim: int | None = None
    mlp_ratio: float = 8.0 / 3.0
    layer_pattern: list[str] | None = None
    window: int = 256
    persistent_tokens: int | None = None
    segment: int = 64
    chunk_size: int | None = None
    lr_max: float | None = None
    spec: dict | None = None
    attention_conv: int = 0
    gate_rank: int = 32
    d_state: int = 64
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    checkpoint_chunks: int = 0
    max_context: int = 0             # longest sequence evaluation accepts (0: unbounded)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        preset = get_preset(self.preset)  # raises with the valid names
        if self.persistent_tokens is None:
            self.persistent_tokens = preset.persistent_tokens
        for name in ("vocab_size", "d_model", "n_layers", "heads", "window", "segment", "gate_rank", "d_state"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        require(isinstance(self.attention_conv, int) and not isinstance(self.attention_conv, bool)
                and 0 <= self.attention_conv <= 64, "attention_conv", self.attention_conv,
                "an integer from 0 (none) to 64: the kernel of the convolution on attention's q, k, v",
                "e.g. attention_conv=4")
        for name in ("head_dim", "chunk_size"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1), name,
                    value, "None (the default) or an integer >= 1", f"drop {name} or give a positive integer")
        require(self.head_dim is not None or self.d_model % self.heads == 0, "heads", self.heads,
                f"a divisor of d_model={self.d_model}", "change heads or set head_dim")
        require(isinstance(self.persistent_tokens, int) and not isinstance(self.persistent_tokens, bool)
                and self.persistent_tokens >= 0, "persistent_tokens", self.persistent_tokens,
                "None (the preset's) or an integer >= 0")
        require(self.lr_max is None or (isinstance(self.lr_max, (int, float)) and not isinstance(self.lr_max, bool)
                                        and math.isfinite(self.lr_max) and self.lr_max > 0), "lr_max", self.lr_max,
                "None (the preset's) or a finite number > 0", "e.g. lr_max=0.01")
        require(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "> 0")
        for mixer in self.pattern:
            require(mixer in MIXERS, "layer_pattern", mixer, f"mixers from {MIXERS}",
                    "e.g. layer_pattern=['memory', 'memory', 'swa']")
        if self.lr_max is not None:
            require(preset.ttt_base_lr is None, "lr_max", self.lr_max,
                    f"None for preset {self.preset!r}: its inner step is TTT's eta_base sigmoid(.), eta_base "
                    f"{preset.ttt_base_lr}", "drop lr_max")
            require(any(m in _MEMORY_MIXERS for m in self.pattern), "lr_max", self.lr_max,
                    f"None: no layer of {self.pattern} has a memory with an inner step",
                    f"drop lr_max, or use mixers from {_MEMORY_MIXERS}")
        self.memory_spec    # the spec's checks (unknown names, parameters, combinations) fail here

    @property
    def pattern(self) -> list[str]:
        """The mixer of every layer."""
        base = self.layer_pattern or [_BLOCK_MIXER[get_preset(self.preset).block]]
        return [base[i % len(base)] for i in range(self.n_layers)]

    @property
    def memory_spec(self) -> MirasSpec:
        """The MirasSpec of the memory mixers: the preset's, changed by `spec`, with `chunk_size` if given."""
        spec = get_preset(self.preset).spec
        if self.spec:
            spec = spec_from_dict(merge_spec(spec_to_dict(spec), self.spec))
        return spec.with_chunk_size(self.chunk_size) if self.chunk_size else spec

    def to_dict(self) -> dict:
        return {**asdict(self), "spec": spec_to_dict(self.memory_spec)}

    def __eq__(self, other) -> bool:
        """Equal when they build the same model (a spec given as changes equals the same spec written out)."""
        return isinstance(other, MirasConfig) and self.to_dict() == other.to_dict()

    @classmethod
    def from_dict(cls, data: dict) -> "MirasConfig":
        """A config from to_dict's form, of this version or an older one (without `spec` or `miras_version`: the
        preset's spec); keys this version does not know are refused with the version that wrote them."""
        data = dict(data)
        written_by = data.pop("miras_version", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        require(not unknown, "config keys", unknown, f"keys of MirasConfig in miras {VERSION}: {sorted(known)}",
                f"the config was written by miras {written_by or '(a version before 0.1.0)'}; load it with that "
                "version, or drop the keys")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_MEMORY_MIXERS = tuple(m for m in MIXERS if m not in ("attention", "swa", "mamba2"))   # the mixers lr_max bounds
_BLOCK_MIXER = {"attention": "attention", "memory": "memory", "mamba2": "mamba2", "ttt": "ttt",
                "memory+swa": "memory+swa", "titans-mal": "titans-mal", "titans-mag": "titans-mag",
                "titans-mac": "titans-mac"}

# name -> (d_model, heads, target parameters); n_layers is solved to match the target (sizes.py).
SIZES = {"tiny": (64, 2, None), "small": (256, 4, 12e6), "170M": (768, 12, 170e6), "340M": (1024, 16, 340e6),
         "760M": (1536, 24, 760e6), "1.3B": (2048, 32, 1.3e9)}
