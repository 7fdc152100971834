"""`miras export`: a `miras train` run -> a Hugging Face folder that transformers loads without knowing miras.

    from miras.models.export import export_run
    export_run("runs/small", "hf/small")             # newest checkpoint; or "runs/small/step-000500"

    AutoModelForCausalLM.from_pretrained("hf/small", trust_remote_code=True)   # any process with miras installed
    AutoTokenizer.from_pretrained("hf/small", trust_remote_code=True)          # (it reads config.json first)

The folder: config.json (MirasHFConfig + auto_map to modeling_miras.py), generation_config.json, model.safetensors,
modeling_miras.py (imports the installed miras' classes), tokenizer.json + tokenizer_config.json (the run's
tokenizer: same ids, same text; eos = bos = pad, left padding). `import miras` alone also lets the Auto classes
load it (no trust_remote_code needed then).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError, require
from .hf_remote import AUTO_MAP, write_remote_code

# Text the exported tokenizer must encode and decode exactly as the run's own (checked on every export).
CHECK_TEXT = "ROMEO.\n  But soft, what light?\tCafé naïve — 日本語 🎉 Ā x<|endoftext|>y \u00a0end "


def export_run(run: str | Path, out_dir: str | Path, force: bool = False, tokenizer: str | None = None) -> dict:
    """Writes the Hugging Face folder of a run folder's newest checkpoint (or of a step-* checkpoint folder).

    out_dir must be new or empty unless force (then the files of the export replace those of the same name; other
    files stay). tokenizer: a tokenizer folder or "byte" instead of the run's own. Returns a summary dict.
    """
    from ..eval.load import load_run, resolve_checkpoint
    from .hf import MirasForCausalLM, MirasHFConfig
    from .hf_tokenizer import hf_tokenizer

    run_dir, checkpoint = resolve_checkpoint(run)
    out = Path(out_dir).expanduser().resolve()
    _check_out_dir(out, run_dir, force)
    model, tok, config = load_run(run_dir, tokenizer, str(checkpoint) if checkpoint else None)
    if tok is None:
        raise ConfigError(f"run={str(run)!r} is invalid (it was trained on the synthetic task "
                          f"{config['data']['task']!r}, whose token ids are no text): allowed a run trained on text; "
                          "fix: pass --tokenizer DIR if the ids are a tokenizer's")
    require(tok.vocab_size <= model.config.vocab_size, "tokenizer", f"vocab_size={tok.vocab_size}",
            f"<= the model's vocab_size={model.config.vocab_size}", "pass the tokenizer the run was trained with")
    eos = tok.eos_id
    hf_config = MirasHFConfig.from_miras(model.config, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                                         architectures=["MirasForCausalLM"], auto_map=dict(AUTO_MAP))
    hf_model = MirasForCausalLM(hf_config)
    hf_model.model.load_state_dict(model.state_dict())
    hf_model.generation_config.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    hf_tok = hf_tokenizer(tok, model.config.max_context)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        hf_model.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        _portable_tokenizer_config(tmp)
        write_remote_code(tmp)
        check_tokenizer(tmp, tok)
        out.mkdir(exist_ok=True)
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"run": str(run_dir), "checkpoint": config["checkpoint"], "out_dir": str(out),
            "files": files, "preset": model.config.preset, "parameters": model.num_parameters(),
            "tokenizer": tok.name, "vocab_size": tok.vocab_size, "eos_id": eos}


def check_tokenizer(folder: str | Path, tok, text: str = CHECK_TEXT) -> None:
    """Raises ConfigError unless AutoTokenizer.from_pretrained(folder) encodes and decodes text as tok does."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder))
    ids, want = hf.encode(text, add_special_tokens=False), tok.encode(text)
    back, want_back = hf.decode(want, skip_special_tokens=False), tok.decode(want)
    if ids != want or back != want_back or hf.eos_token_id != tok.eos_id or hf.pad_token_id != tok.eos_id:
        raise ConfigError(f"the exported tokenizer in {folder} differs from the run's {tok.name} tokenizer "
                          f"(ids equal: {ids == want}, text equal: {back == want_back}, eos {hf.eos_token_id} vs "
                          f"{tok.eos_id}): this tokenizers / transformers version is not supported by miras export")


def _check_out_dir(out: Path, run_dir: Path, force: bool) -> None:
    require(not out.exists() or out.is_dir(), "out_dir", str(out), "a folder (new or empty)",
            "pass the path of a folder")
    inside = out.relative_to(run_dir).parts if run_dir in out.parents else ()
    require(out != run_dir and not (inside and inside[0].startswith("step-")), "out_dir", str(out),
            f"a folder that is neither the run folder {run_dir} nor inside one of its checkpoints",
            "pass another path")
    busy = out.is_dir() and any(out.iterdir())
    require(not busy or force, "out_dir", str(out), "a new or empty folder",
            "pass --force (force=True) to replace the exported files in it, or another path")


def _portable_tokenizer_config(folder: Path) -> None:
    """tokenizer_class PreTrainedTokenizerFast: the name every transformers from 4.56 on loads a tokenizer.json as
    (transformers 5 writes its new name, TokenizersBackend)."""
    import json

    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


__all__ = ["CHECK_TEXT", "check_tokenizer", "export_run"]
