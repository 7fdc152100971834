"""`miras train`: one loop for a laptop CPU and for torchrun (DDP, or FSDP2 with run.fsdp)."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..models import MirasConfig, MirasLM
from ..models.config import VERSION
from ..models.lm import cross_entropy
from ..models.sizes import config_for_size
from ..errors import ConfigError, require
from .checkpoint import check_states, list_checkpoints, load_newest, read_checkpoint, restore_rng, save_checkpoint
from .config import RunConfig, resume_differences
from .data import build_data
from .denormals import denormals_flushed
from .optim import build_optimizer, lr_at


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss with run.on_nan=stop); `step`: the step it stopped at."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK: gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(cfg: RunConfig, d: Dist) -> torch.device:
    name = cfg.run.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        why = "has no CUDA support" if not torch.backends.cuda.is_built() else "sees no GPU"
        require(torch.cuda.is_available(), "run.device", "cuda", f"auto | cpu here (torch {torch.__version__} {why})",
                "run.device=auto (cuda when there is a GPU) or run.device=cpu")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def model_config(cfg: RunConfig, vocab_size: int) -> MirasConfig:
    if cfg.size:
        fixed = {k: v for k, v in cfg.model.to_dict().items() if k not in ("d_model", "heads", "n_layers", "preset")}
        return config_for_size(cfg.model.preset, cfg.size, **{**fixed, "vocab_size": vocab_size})
    return MirasConfig(**{**cfg.model.to_dict(), "vocab_size": vocab_size})


def wrap_model(model: torch.nn.Module, cfg: RunConfig, d: Dist, device: torch.device) -> torch.nn.Module:
    if d.world > 1 and cfg.run.fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if d.world > 1:
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.type == "cuda"
                                                         else None)
    return model


def agree(flag: bool, d: Dist, device: torch.device | None = None) -> bool:
    """Rank 0's decision, on every rank (so that all ranks stop at the same step). device: the training device (NCCL
    broadcasts only CUDA tensors)."""
    if d.world == 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def get_states(model, optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts; with FSDP every rank must call it (collective)."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def set_states(model, optimizer, model_state: dict, optim_state: dict, fsdp: bool) -> None:
    if not fsdp:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


class MetricsLog:
    """metrics.jsonl + metrics.csv (+ TensorBoard when asked and installed), written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled, self.run_dir, self.writer, self.fields = enabled, run_dir, None, None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional extra: pip install tensorboard
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def truncate(self, step: int) -> None:
        """Drops the rows logged after `step` (steps a resumed run replays) and any partial last line."""
        if not self.enabled:
            return
        for path in [self.run_dir / "metrics.jsonl", *self.run_dir.glob("metrics_*.csv")]:
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            if path.suffix == ".jsonl":
                kept = [x for x in lines if _row_step(x) is not None and _row_step(x) <= step]
            else:
                header = lines[:1]
                column = header[0].rstrip("\n").split(",").index("step") if header and "step" in header[0] else None
                kept = header + [x for x in lines[1:] if column is not None and x.endswith("\n")
                                 and _csv_step(x, column) is not None and _csv_step(x, column) <= step]
            if kept != lines:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(kept), encoding="utf-8")
                os.replace(tmp, path)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.run_dir / f"metrics_{row['kind']}.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{row['kind']}/{key}", value, row["step"])


@torch.no_grad()
def _finite(model: torch.nn.Module) -> bool:
    return all(bool(p.isfinite().all()) for p in model.parameters())


def _row_step(line: str) -> int | None:
    """The step of a complete metrics.jsonl line (None for a partial or malformed one)."""
    try:
        row = json.loads(line) if line.endswith("\n") else None
    except json.JSONDecodeError:
        return None
    return row.get("step") if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def _csv_step(line: str, column: int) -> int | None:
    cells = line.rstrip("\n").split(",")
    return int(cells[column]) if column < len(cells) and cells[column].isdigit() else None


ARTIFACTS = ("config.json", "metrics.jsonl", "metrics_*.csv", "step-*", ".tmp-step-*", ".trash-step-*", "tb", "eval",
             "loss.png", "distributed_check.json", "data", "tokenizer", ".tmp-tokenizer")   # what a run writes in its folder


REPLACED = ".replaced-run"   # --overwrite: the earlier run's files wait here until the new run is set up


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def prepare_run_dir(run_dir: Path, overwrite: bool, d: Dist) -> Path | None:
    """A fresh run needs an empty (or new) run folder; overwrite=True first moves what an earlier run wrote there
    (ARTIFACTS: checkpoints, logs, config.json, its data and tokenizer caches; other files stay) into REPLACED,
    returned: train() deletes it once the new run is set up, or puts it back (restore_run_dir) when the setup fails,
    so that a bad input given with --overwrite (a missing corpus, ...) never costs the earlier run."""
    entries = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".write-test-")) \
        if run_dir.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        raise ConfigError(f"run.out_dir={str(run_dir)!r} is invalid: allowed a new or empty folder for a fresh run; "
                          f"it holds {shown}; fix: --resume to continue that run, --overwrite to replace it, or "
                          "another run.out_dir")
    aside = None
    if entries and d.main:
        aside = run_dir / REPLACED
        if aside.exists():                              # left by a run killed while setting up over an older one
            _remove(aside)
        aside.mkdir()
        for pattern in ARTIFACTS:
            for path in run_dir.glob(pattern):
                os.replace(path, aside / path.name)
    if d.world > 1:
        dist.barrier()                                  # every rank has looked before rank 0 writes anything
    return aside


def restore_run_dir(run_dir: Path, aside: Path | None) -> None:
    """Undoes a fresh run's setup that failed: removes what it wrote (ARTIFACTS) and puts an overwritten run's files
    back from `aside`; files of other names are left alone."""
    for pattern in ARTIFACTS:
        for path in run_dir.glob(pattern):
            _remove(path)
    if aside is not None and aside.is_dir():
        for path in aside.iterdir():
            os.replace(path, run_dir / path.name)
        aside.rmdir()


@torch.no_grad()
def rank_param_divergence(model: torch.nn.Module) -> float:
    """max |p - p on rank 0| over every parameter and rank (0.0 when data parallelism kept them equal)."""
    worst = torch.zeros((), device=next(model.parameters()).device)    # (NCCL reduces only CUDA tensors)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().to(worst))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def _on(t, device):
    return None if t is None else t.to(device)


@torch.no_grad()
def evaluate(model, batches, device, autocast, resets=lambda inputs: None) -> float:
    """Mean validation loss; resets(inputs) -> the batch's document starts (RunData.resets) or None."""
    model.eval()
    total, count = 0.0, 0
    for inputs, labels in batches:
        with autocast:
            logits = model(inputs.to(device), resets=_on(resets(inputs), device))[0]
            total += cross_entropy(logits, labels.to(device)).item() * labels.numel()
        count += labels.numel()
    model.train()
    return total / max(count, 1)


def _set_up(cfg: RunConfig, run_dir: Path, d: Dist, device: torch.device):
    """(data, model config, model) of a run: what can still fail on a bad input (corpus, sequence length, memory)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{d.rank}"     # one per rank: ranks probe the same folder at once
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run.out_dir={str(run_dir)!r} is not writable: {err}") from err
    torch.manual_seed(cfg.run.seed)
    data = build_data(cfg, run_dir, d.rank, d.world, write=d.main)
    mcfg = model_config(cfg, data.vocab_size)
    return data, mcfg, MirasLM(mcfg).to(device)


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Runs cfg; returns a summary (steps, losses, tokens/s, run folder).

    resume=True continues the run in cfg.run.out_dir from its newest intact checkpoint (an older one, with a
    warning, when the newest is corrupt); cfg may differ from the run's config.json only in the fields of
    config.RESUMABLE. A fresh run (resume=False) needs an empty run folder unless overwrite=True. Everything is
    checked before anything is written. Denormal floats are flushed to zero while it runs (denormals.py).
    """
    with denormals_flushed():
        return _train(cfg, resume, overwrite)


def _train(cfg: RunConfig, resume: bool, overwrite: bool) -> dict:
    d = init_distributed(cfg.run.device)
    device = resolve_device(cfg, d)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    run_dir = Path(cfg.run.out_dir)
    if resume:
        resume_differences(cfg, run_dir)                # ConfigError naming every field that may not change
        require(bool(list_checkpoints(run_dir)), "--resume of run.out_dir", str(run_dir),
                "a run folder with a complete checkpoint (step-* with meta.json)",
                "nothing was saved yet (the run stopped before its first checkpoint): start it again with "
                "--overwrite")
    aside, created = None, not run_dir.exists()
    if not resume:
        aside = prepare_run_dir(run_dir, overwrite, d)
    try:
        data, mcfg, model = _set_up(cfg, run_dir, d, device)
    except BaseException:          # e.g. data.corpus missing, data.seq_len past the corpus: the folder as it was
        if not resume and d.main:
            restore_run_dir(run_dir, aside)
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    wrapped = wrap_model(model, cfg, d, device)
    optimizer = build_optimizer(model, cfg.optim)
    fsdp = cfg.run.fsdp and d.world > 1
    start_step, last = 0, {}
    if resume:
        def read(path: Path):
            states = read_checkpoint(path, mcfg.to_dict())
            check_states(path, model, states[0], None if fsdp else optimizer, states[1])
            return states

        ckpt, (model_state, optim_state, ckpt_meta) = load_newest(run_dir, read)
        set_states(model, optimizer, model_state, optim_state, fsdp)
        restore_rng(ckpt)
        start_step, last = ckpt_meta["step"], dict(ckpt_meta.get("metrics") or {})
    if d.main:
        (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "resolved_model": {
            **mcfg.to_dict(), "miras_version": VERSION}}, indent=2))
    log = MetricsLog(run_dir, d.main, cfg.run.tensorboard)
    log.truncate(start_step)
    summary = {"run_dir": str(run_dir), "unigram_loss": data.unigram_loss, "tokenizer": data.tokenizer_name,
               "parameters": model.num_parameters()}
    if start_step >= cfg.optim.steps:                   # resumed a finished run: nothing to do
        return {**last, **summary, "steps": start_step, "complete": True}
    step_fn = torch.compile(wrapped) if cfg.run.compile else wrapped
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.run.amp)
    autocast = torch.autocast("cuda", dtype=amp) if device.type == "cuda" and amp else nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == torch.float16)
    o = cfg.optim
    tokens_per_step = o.batch_size * o.grad_accum * cfg.data.seq_len * d.world
    meta = {"model_config": mcfg.to_dict(), "tokenizer": data.tokenizer_name, "miras_version": VERSION}
    start_time, skipped = time.time(), 0
    step = start_step
    # optim.schedule=time: the share of the time budget spent, continuing a resumed run's over this session's budget
    spent_before = float(last.get("time_progress", 0.0)) if o.schedule == "time" else 0.0
    time_progress = spent_before
    while step < o.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, o, time_progress)
        loss_sum = torch.zeros((), device=device)
        for micro in range(o.grad_accum):
            inputs, labels = data.train.batch(step * o.grad_accum + micro)
            sync = micro == o.grad_accum - 1 or d.world == 1 or cfg.run.fsdp
            try:
                with nullcontext() if sync else wrapped.no_sync():
                    with autocast:
                        logits = step_fn(inputs.to(device), resets=_on(data.resets(inputs), device))[0]
                        loss = cross_entropy(logits, labels.to(device))
                    # outside autocast (PyTorch's advice): backward runs in the dtypes forward chose (ops/amp.py)
                    scaler.scale(loss / o.grad_accum).backward()
            except ConfigError as err:      # e.g. a gate-range check tripped by NaN weights: a non-finite model
                if _finite(model):
                    raise
                raise TrainingError(f"the parameters are non-finite (NaN or inf) at step {step} (the forward pass "
                                    f"failed: {err}); run.on_nan=skip cannot recover from that; the last checkpoint in "
                                    f"{run_dir} is intact; fix: train again with a lower optim.lr (--overwrite, "
                                    "or another run.out_dir)", step) from err
            loss_sum += loss.detach() / o.grad_accum
        if d.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        grad_norm = None
        if math.isfinite(loss_sum.item()):
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip if o.clip > 0 else float("inf"))
        bad_grad = grad_norm is not None and not scaler.is_enabled() and not math.isfinite(float(grad_norm))
        if grad_norm is None or bad_grad:     # (with fp16 the scaler skips non-finite gradients itself)
            optimizer.zero_grad(set_to_none=True)
            what = f"gradient norm {float(grad_norm)}" if bad_grad else f"loss {loss_sum.item()}"
            if cfg.run.on_nan == "stop":
                raise TrainingError(f"non-finite {what} at step {step}; the last good checkpoint "
                                    f"in {run_dir} is intact (resume with --resume, or set run.on_nan=skip)", step)
            skipped += 1
            step += 1
            continue
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.time() - start_time
        last = {"kind": "train", "step": step, "loss": loss_sum.item(), "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_step * (step - start_step) / elapsed,
                "elapsed_s": elapsed, "skipped": skipped}
        if o.schedule == "time":
            time_progress = min(1.0, spent_before + (1 - spent_before) * elapsed / (60 * cfg.run.max_minutes))
            last["time_progress"] = time_progress
        out_of_time = agree(bool(cfg.run.max_minutes and elapsed > 60 * cfg.run.max_minutes), d, device)
        if d.main and (step % cfg.run.log_every == 0 or step == o.steps or out_of_time):
            eta = (o.steps - step) * elapsed / (step - start_step)
            print(f"step {step}/{o.steps}  loss {last['loss']:.4f}  lr {last['lr']:.2e}  "
                  f"{last['tokens_per_s']:.0f} tok/s  eta {eta / 60:.1f} min", flush=True)
            log.write(last)
        if step % cfg.run.eval_every == 0 or step == o.steps or out_of_time:
            val = evaluate(model, data.val_batches(), device, autocast, data.resets)
            if d.main:
                print(f"step {step}  val_loss {val:.4f}  (unigram baseline {data.unigram_loss:.4f})", flush=True)
                log.write({"kind": "val", "step": step, "val_loss": val, "elapsed_s": elapsed,
                           "unigram_loss": data.unigram_loss})
            last["val_loss"] = val
        if step % cfg.run.save_every == 0 or step == o.steps or out_of_time:
            model_state, optim_state = get_states(model, optimizer, cfg.run.fsdp and d.world > 1)
            if d.main:
                save_checkpoint(run_dir, step, model_state, optim_state, {**meta, "metrics": last}, cfg.run.keep_last)
        if out_of_time:
            break
    if d.world > 1 and not cfg.run.fsdp:
        last["rank_max_param_diff"] = rank_param_divergence(model)
        if d.main:
            (run_dir / "distributed_check.json").write_text(json.dumps(
                {"world_size": d.world, "max_param_diff_vs_rank0": last["rank_max_param_diff"]}))
    return {**last, **summary, "steps": step}
