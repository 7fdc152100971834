"""Hugging Face wiring (needs the `hf` extra): MirasHFConfig, MirasForCausalLM, MirasCache.

    import miras.models.hf  # registers model_type "miras" with AutoConfig / AutoModelForCausalLM
    model = MirasForCausalLM(MirasHFConfig.from_miras(MirasConfig(preset="titans-lmm")))
    model.save_pretrained(path)                       # config.json + model.safetensors
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generate(ids, max_new_tokens=32)            # greedy, sampling, beam search; recurrent cache

Generation keeps every layer's state (recurrent memory, momentum, open-chunk anchor and offset, conv inputs,
sliding-window keys/values, Titans segment) in a MirasCache and feeds only the new token(s) after the prompt.
"""
from __future__ import annotations

from dataclasses import fields

from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import MirasConfig
from .lm import MirasLM
from .padding import RowGroups
from .state_tree import map_tensors

_MIRAS_FIELDS = tuple(f.name for f in fields(MirasConfig))


class MirasHFConfig(PretrainedConfig):
    """A MirasConfig as a PretrainedConfig: every MirasConfig field is an attribute of the same name and default
    (validated by MirasConfig), plus use_cache and the usual PretrainedConfig keywords. tie_word_embeddings follows
    tie_embeddings; hidden_size / num_hidden_layers / num_attention_heads read d_model / n_layers / heads."""

    model_type = "miras"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "heads"}

    def __init__(self, use_cache: bool = True, **kwargs):
        miras = MirasConfig(**{name: kwargs.pop(name) for name in _MIRAS_FIELDS if name in kwargs})
        for name, value in miras.to_dict().items():
            setattr(self, name, value)
        self.use_cache = use_cache
        kwargs["tie_word_embeddings"] = miras.tie_embeddings
        super().__init__(**kwargs)

    @classmethod
    def from_miras(cls, config: MirasConfig, **kwargs) -> "MirasHFConfig":
        """kwargs: PretrainedConfig keywords (e.g. bos_token_id, eos_token_id)."""
        return cls(**config.to_dict(), **kwargs)

    def to_miras(self) -> MirasConfig:
        return MirasConfig(**{name: getattr(self, name) for name in _MIRAS_FIELDS})


class MirasCache:
    """The generation cache: MirasLM's per-layer states and the number of tokens they have seen.

    A recurrent layer's state has a fixed size, so a decoding step costs the same at any context length (a full
    attention layer's KV cache grows, a sliding window's stays under the window). Every tensor of dim >= 1 in a
    state has the batch first; 0-dim tensors (positions) are shared by the rows.
    """

    is_compileable = False   # read by generate: no torch.compile of the decoding step
    is_croppable = False     # a recurrent state cannot be rolled back token by token

    def __init__(self, states: list | None = None, seen: int = 0):
        self.states, self.seen = states, seen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (the same for every layer)."""
        return self.seen

    def advance(self, states: list, new_tokens: int) -> None:
        """The states after `new_tokens` more tokens."""
        self.states, self.seen = states, self.seen + new_tokens

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep (or reorder, repeat) the batch rows `indices` (ids or a bool mask)."""
        if isinstance(self.states, RowGroups):
            self.states = self.states.select(indices)
        else:
            self.states = map_tensors(lambda t: t[indices.to(t.device)] if t.dim() else t, self.states)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Beam search: row i continues from row beam_idx[i]."""
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each row `repeats` times in a row (expansion for beams / several return sequences)."""
        if isinstance(self.states, RowGroups):
            self.states = self.states.repeat_interleave(repeats)
        else:
            self.states = map_tensors(lambda t: t.repeat_interleave(repeats, dim=0) if t.dim() else t, self.states)


class MirasForCausalLM(PreTrainedModel, GenerationMixin):
    """MirasLM (as `.model`) with the PreTrainedModel / GenerationMixin interface. Left-padded batches (the usual
    batched-generation layout) and right-padded ones run each row as it would run alone (padding.py).

    GenerationMixin.prepare_inputs_for_generation is kept as it is: once the cache holds the prompt it feeds only
    the tokens the cache has not seen (the last one while decoding), also when generate restarts from a
    MirasCache passed as past_key_values.
    """

    config_class = MirasHFConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}   # applies when tie_word_embeddings
    _is_stateful = True            # a recurrent state cannot be rolled back: no assisted generation
    supports_gradient_checkpointing = False

    def __init__(self, config: MirasHFConfig):
        super().__init__(config)
        self.model = MirasLM(config.to_miras())
        self.post_init()

    def _init_weights(self, module) -> None:
        """MirasLM initializes its own parameters (gate biases, decays, W0) in its constructor: keep them."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False               # generate must not make a DynamicCache: forward makes a MirasCache

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.head

    def forward(self, input_ids: Tensor | None = None, labels: Tensor | None = None,
                past_key_values: MirasCache | None = None, use_cache: bool | None = None,
                attention_mask: Tensor | None = None, return_dict: bool | None = None, **kwargs):
        """input_ids [B, T] (the tokens after those in past_key_values) -> CausalLMOutputWithPast.

        labels: [B, T], shifted inside (labels = input_ids gives next-token loss; -100 is ignored).
        past_key_values: a MirasCache, advanced in place by T tokens. use_cache: return the cache (a new one
        without past_key_values); default config.use_cache outside training. attention_mask: [B, past + T]
        or [B, T], 1 = token, 0 = pad, each row's tokens one contiguous run (left or right padding); padded
        rows run as groups of equal length, so no state sees a pad.
        """
        if input_ids is None:
            raise ValueError("MirasForCausalLM needs input_ids (inputs_embeds is not supported)")
        if attention_mask is not None:
            attention_mask = attention_mask[:, -input_ids.shape[1]:]   # the columns of the new tokens
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise ValueError("MirasForCausalLM returns neither attentions nor hidden states")
        use_cache = use_cache if use_cache is not None else self.config.use_cache and not self.training
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        logits, states = self.model(input_ids, past_key_values.states if past_key_values is not None else None,
                                    attention_mask)
        cache = past_key_values if past_key_values is not None else MirasCache() if use_cache else None
        if cache is not None:
            cache.advance(states, input_ids.shape[1])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache if use_cache else None)
        return out if return_dict else out.to_tuple()


AutoConfig.register("miras", MirasHFConfig, exist_ok=True)
AutoModelForCausalLM.register(MirasHFConfig, MirasForCausalLM, exist_ok=True)

__all__ = ["MirasCache", "MirasForCausalLM", "MirasHFConfig"]
