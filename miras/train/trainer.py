"""`miras train`: one loop for a laptop CPU and for torchrun (DDP, or FSDP2 with run.fsdp)."""
from __future__ import annotations

import csv
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..models import MirasConfig, MirasLM
from ..models.lm import cross_entropy
from ..models.sizes import config_for_size
from ..spec.errors import ConfigError
from .checkpoint import list_checkpoints, read_checkpoint, restore_rng, save_checkpoint
from .config import RunConfig
from .data import build_data
from .optim import build_optimizer, lr_at


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss with run.on_nan=stop)."""


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


def agree(flag: bool, d: Dist) -> bool:
    """Rank 0's decision, on every rank (so that all ranks stop at the same step)."""
    if d.world == 1:
        return flag
    t = torch.tensor(float(flag))
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
def rank_param_divergence(model: torch.nn.Module) -> float:
    """max |p - p on rank 0| over every parameter and rank (0.0 when data parallelism kept them equal)."""
    worst = torch.zeros(())
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


@torch.no_grad()
def evaluate(model, batches, device, autocast) -> float:
    model.eval()
    total, count = 0.0, 0
    for inputs, labels in batches:
        with autocast:
            total += cross_entropy(model(inputs.to(device))[0], labels.to(device)).item() * labels.numel()
        count += labels.numel()
    model.train()
    return total / max(count, 1)


def train(cfg: RunConfig, resume: bool = False) -> dict:
    """Runs cfg; returns a summary (steps, losses, tokens/s, run folder)."""
    d = init_distributed(cfg.run.device)
    device = resolve_device(cfg, d)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    run_dir = Path(cfg.run.out_dir)
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
    model = MirasLM(mcfg).to(device)
    if d.main:
        (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "resolved_model": mcfg.to_dict()}, indent=2))
    wrapped = wrap_model(model, cfg, d, device)
    optimizer = build_optimizer(model, cfg.optim)
    start_step = 0
    ckpts = list_checkpoints(run_dir) if resume else []
    if ckpts:
        model_state, optim_state, ckpt_meta = read_checkpoint(ckpts[-1], mcfg.to_dict())
        set_states(model, optimizer, model_state, optim_state, cfg.run.fsdp and d.world > 1)
        restore_rng(ckpts[-1])
        start_step = ckpt_meta["step"]
    step_fn = torch.compile(wrapped) if cfg.run.compile else wrapped
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.run.amp)
    autocast = torch.autocast("cuda", dtype=amp) if device.type == "cuda" and amp else nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == torch.float16)
    log = MetricsLog(run_dir, d.main, cfg.run.tensorboard)
    o = cfg.optim
    tokens_per_step = o.batch_size * o.grad_accum * cfg.data.seq_len * d.world
    meta = {"model_config": mcfg.to_dict(), "tokenizer": data.tokenizer_name}
    start_time, skipped, last = time.time(), 0, {}
    step = start_step
    while step < o.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, o)
        loss_sum = torch.zeros((), device=device)
        for micro in range(o.grad_accum):
            inputs, labels = data.train.batch(step * o.grad_accum + micro)
            sync = micro == o.grad_accum - 1 or d.world == 1 or cfg.run.fsdp
            with autocast, (nullcontext() if sync else wrapped.no_sync()):
                loss = cross_entropy(step_fn(inputs.to(device))[0], labels.to(device))
                scaler.scale(loss / o.grad_accum).backward()
            loss_sum += loss.detach() / o.grad_accum
        if d.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        if not math.isfinite(loss_sum.item()):
            optimizer.zero_grad(set_to_none=True)
            if cfg.run.on_nan == "stop":
                raise TrainingError(f"non-finite loss {loss_sum.item()} at step {step}; the last good checkpoint "
                                    f"in {run_dir} is intact (resume with --resume, or set run.on_nan=skip)")
            skipped += 1
            step += 1
            continue
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip if o.clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.time() - start_time
        last = {"kind": "train", "step": step, "loss": loss_sum.item(), "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_step * (step - start_step) / elapsed,
                "elapsed_s": elapsed, "skipped": skipped}
        out_of_time = agree(bool(cfg.run.max_minutes and elapsed > 60 * cfg.run.max_minutes), d)
        if d.main and (step % cfg.run.log_every == 0 or step == o.steps or out_of_time):
            eta = (o.steps - step) * elapsed / (step - start_step)
            print(f"step {step}/{o.steps}  loss {last['loss']:.4f}  lr {last['lr']:.2e}  "
                  f"{last['tokens_per_s']:.0f} tok/s  eta {eta / 60:.1f} min", flush=True)
            log.write(last)
        if step % cfg.run.eval_every == 0 or step == o.steps or out_of_time:
            val = evaluate(model, data.val_batches(), device, autocast)
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
    return {**last, "steps": step, "run_dir": str(run_dir), "unigram_loss": data.unigram_loss,
            "tokenizer": data.tokenizer_name, "parameters": model.num_parameters()}
