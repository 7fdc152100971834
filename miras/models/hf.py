"""Hugging Face wiring (needs the `hf` extra): MirasHFConfig, MirasForCausalLM, MirasCache.

    import miras.models.hf  # registers model_type "miras" with AutoConfig / AutoModelForCausalLM
    model = MirasForCausalLM(MirasHFConfig.from_miras(MirasConfig(preset="titans-lmm")))
    model.save_pretrained(path)                       # config.json + model.safetensors
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generate(ids, max_new_tokens=32)            # greedy, sampling, beam search; recurrent cache

Generation keeps every layer's state (recurrent memory, momentum, open-chunk anchor, start and offset, conv inputs,
sliding-window keys/values, Titans segment) in a MirasCache and feeds only the new token(s) after the prompt.
"""
from __future__ import annotations

from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..ops.documents import resets_from_cu_seqlens
from ..errors import require
from .hf_config import MirasHFConfig
from .lm import MirasLM
from .padding import RowGroups
from .state_tree import map_tensors

# The keyword under which the installed transformers passes the cache to generate / forward and returns it:
# `cache` from 5.24 on, `past_key_values` before (forward accepts both).
CACHE_KEYWORD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class MirasCache:
    """The generation cache: MirasLM's per-layer states and the number of tokens they have seen.

    A recurrent layer's state has a fixed size, so a decoding step costs the same at any context length (a full
    attention layer's KV cache grows, a sliding window's stays under the window). Every tensor of dim >= 1 in a
    state has the batch first; 0-dim tensors (positions) are shared by the rows.
    """

    # Read by generate (which version reads which is in docs/models.md). A recurrent state can be neither compiled
    # into a static decoding step nor cropped token by token; is_linear (transformers >= 5.24, one flag per layer
    # there) marks the whole cache as recurrent, so generate leaves the choice of the tokens to feed to
    # MirasForCausalLM.prepare_inputs_for_generation.
    is_compileable = False
    is_croppable = False
    is_linear = (True,)

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

    The cache is a MirasCache under the keyword that the installed transformers uses (`cache` from 5.24 on,
    `past_key_values` before; forward accepts either). prepare_inputs_for_generation feeds exactly the tokens the
    cache has not seen: the prompt, then the last token while decoding, and the new tail when generate restarts from
    a MirasCache it returned.
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

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                                      use_cache: bool | None = None, **kwargs) -> dict:
        """generate's step inputs: the tokens of input_ids (the whole sequence so far) that the cache has not seen.

        Replaces GenerationMixin's version, whose slicing rule (cache_position, next_sequence_length, is_linear)
        changes from one transformers release to the next; the only rule a recurrent cache needs is its length.
        """
        cache = _cache_argument(kwargs)
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("MirasForCausalLM.generate needs input_ids (inputs_embeds is not supported)")
        if cache is not None and cache.seen:
            if input_ids.shape[1] <= cache.seen:
                raise ValueError(
                    f"generate with a MirasCache that has seen {cache.seen} tokens got input_ids of length "
                    f"{input_ids.shape[1]}: pass the whole sequence (the tokens the cache has seen, then the new ones)")
            input_ids = input_ids[:, cache.seen:]
        inputs = {"input_ids": input_ids.contiguous(), "attention_mask": attention_mask, "use_cache": use_cache}
        inputs.update({key: True for key in ("output_attentions", "output_hidden_states") if kwargs.get(key)})
        if cache is not None:
            inputs[CACHE_KEYWORD] = cache
        return inputs

    def forward(self, input_ids: Tensor | None = None, labels: Tensor | None = None,
                past_key_values: MirasCache | None = None, use_cache: bool | None = None,
                attention_mask: Tensor | None = None, return_dict: bool | None = None,
                position_ids: Tensor | None = None, *, cache: MirasCache | None = None, **kwargs):
        """input_ids [B, T] (the tokens after those in the cache) -> CausalLMOutputWithPast.

        labels: [B, T], shifted inside (labels = input_ids gives next-token loss; -100 is ignored).
        cache (or past_key_values, its name before transformers 5.24): a MirasCache, advanced in place by T tokens.
        use_cache: return the cache (a new one when none was given); default config.use_cache outside training.
        attention_mask: [B, past + T] or [B, T], 1 = token, 0 = pad, each row's tokens one contiguous run (left or
        right padding); padded rows run as groups of equal length, so no state sees a pad.
        position_ids [B, T] or cu_seq_lens_q [N + 1] (transformers' packed-sequence conventions, e.g.
        DataCollatorWithFlattening): a document starts wherever position_ids is 0 after a token (or at every
        offset of cu_seq_lens_q, batch 1); each document's logits equal a call on it alone (its state starts
        fresh). Positions are not read otherwise: every mixer counts its own.
        The output holds the cache under the installed transformers' name (`cache` or `past_key_values`).
        """
        cache = _cache_argument({"cache": cache, "past_key_values": past_key_values})
        if input_ids is None:
            raise ValueError("MirasForCausalLM needs input_ids (inputs_embeds is not supported)")
        if attention_mask is not None:
            attention_mask = attention_mask[:, -input_ids.shape[1]:]   # the columns of the new tokens
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise ValueError("MirasForCausalLM returns neither attentions nor hidden states")
        use_cache = use_cache if use_cache is not None else self.config.use_cache and not self.training
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        resets = _document_starts(input_ids, position_ids, kwargs.get("cu_seq_lens_q"), attention_mask)
        logits, states = self.model(input_ids, cache.states if cache is not None else None, attention_mask, resets)
        cache = cache if cache is not None else MirasCache() if use_cache else None
        if cache is not None:
            cache.advance(states, input_ids.shape[1])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      num_items_in_batch=kwargs.get("num_items_in_batch"))
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_KEYWORD: cache if use_cache else None})
        return out if return_dict else out.to_tuple()


def _document_starts(input_ids: Tensor, position_ids: Tensor | None, cu_seq_lens: Tensor | None,
                     attention_mask: Tensor | None) -> Tensor | None:
    """resets [B, T] (True at a packed document's first token) from position_ids == 0 or cu_seq_lens; None
    when neither marks a document start after the first token of a row (left padding's first real token, at
    position 0 after pads, is a row's start, not a document's)."""
    B, T = input_ids.shape
    if cu_seq_lens is not None:
        require(B == 1, "cu_seq_lens_q", "with batch " + str(B), "batch 1 (all documents packed in one row)",
                "flatten the batch into one row, or pass position_ids")
        return resets_from_cu_seqlens(cu_seq_lens, input_ids.device)
    if position_ids is None:
        return None
    require(tuple(position_ids.shape) in ((B, T), (1, T)), "position_ids.shape", tuple(position_ids.shape),
            f"{(B, T)}", "one position per token; a document starts where it is 0")
    starts = (position_ids.expand(B, T) == 0).clone()
    starts[:, 0] = False                       # a call's first token is a row start: the cache decides
    if attention_mask is not None:
        starts[:, 1:] &= attention_mask[:, :-1].bool()
    return starts if bool(starts.any()) else None


def _cache_argument(kwargs: dict) -> MirasCache | None:
    """The cache from `cache=` or `past_key_values=` (popped from kwargs); a clear error for anything else."""
    given = {name: kwargs.pop(name) for name in ("cache", "past_key_values") if kwargs.get(name) is not None}
    if len(given) == 2 and given["cache"] is not given["past_key_values"]:
        raise ValueError("MirasForCausalLM got two different caches (cache= and past_key_values=): pass one")
    cache = next(iter(given.values()), None)
    if cache is not None and not isinstance(cache, MirasCache):
        raise ValueError(f"MirasForCausalLM's cache must be a MirasCache (from a previous call or MirasCache()), "
                         f"got {type(cache).__name__}")
    return cache


AutoConfig.register("miras", MirasHFConfig, exist_ok=True)
AutoModelForCausalLM.register(MirasHFConfig, MirasForCausalLM, exist_ok=True)

__all__ = ["CACHE_KEYWORD", "MirasCache", "MirasForCausalLM", "MirasHFConfig"]
