"""A run's tokenizer (miras.data.tokenizer) as a transformers tokenizer: same ids, same text back.

    hf_tokenizer(ByteTokenizer(), model_max_length=0).save_pretrained(folder)   # AutoTokenizer loads the folder

Byte: a `tokenizers` byte-level BPE without merges whose id for a byte is the byte value (the byte-level symbol
of byte b is GPT-2's bytes_to_unicode()[b]); its eos / bos / pad token is byte 0's symbol "Ā", as special as the
byte tokenizer's eos_id 0 and no more: split_special_tokens keeps a "Ā" in text the two bytes of its UTF-8.
BPE: the run's own tokenizers model, eos / bos / pad "<|endoftext|>". Both pad on the left (batched generation).
"""
from __future__ import annotations

from ..data.tokenizer import EOS, BPETokenizer, ByteTokenizer

# model_max_length of a model without a context limit: lm-eval's hf model then scores a document in one window,
# as `miras lm-eval` does (transformers' own "no limit", 1e30, reads as 2048 there).
UNBOUNDED = 1 << 20


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte: the printable Latin-1 bytes stand for themselves, the other 68
    bytes for U+0100 onwards, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def byte_level_tokenizer():
    """A `tokenizers.Tokenizer` with ByteTokenizer's ids: encode(text).ids == list(text.encode())."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: b for b, symbol in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def hf_tokenizer(tok: ByteTokenizer | BPETokenizer, model_max_length: int = 0):
    """A PreTrainedTokenizerFast equal to tok (ids and decoded text), padding on the left.

    model_max_length: the model's context limit (its max_context), 0 for none (UNBOUNDED is written then).
    """
    from transformers import PreTrainedTokenizerFast

    if isinstance(tok, ByteTokenizer):
        backend, eos, split = byte_level_tokenizer(), bytes_to_unicode()[tok.eos_id], True
    else:
        from tokenizers import Tokenizer
        backend, eos, split = Tokenizer.from_str(tok.tokenizer.to_str()), EOS, False   # a copy: left as it is
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=eos, pad_token=eos,
                                   padding_side="left", split_special_tokens=split,
                                   model_max_length=model_max_length or UNBOUNDED,
                                   clean_up_tokenization_spaces=False)


__all__ = ["UNBOUNDED", "byte_level_tokenizer", "bytes_to_unicode", "hf_tokenizer"]
