"""MQAR accuracy curves: presets trained side by side on `make run`'s task, held-out accuracy every few steps.

Task, model and optimizer as `miras compare`'s defaults, so the curves are those of `make run`'s models (64
tokens, 4 pairs, vocab 64; d_model 64, 2 layers, 2 heads, each preset's chunk size; the trainer's AdamW: lr 3e-3,
betas 0.9 / 0.95, weight decay 0.1 except on norms, biases, gates' biases and W0, warmup 50, cosine to 10 %;
batch 32, gradient clip 1), one thread. Prints a table of accuracy by step, writes it as CSV and draws the curves:

    python benchmarks/mqar_curves.py --presets titans-lmm,moneta,yaad,memora --steps 850 \\
        --out docs/img/miras_curves.png                       # the MIRAS models next to Titans (docs/results.md)
    python benchmarks/mqar_curves.py --presets transformer --init gpt2 --steps 2000 --every 250
                                                               # the ablation behind MirasLM's initialization

--init gpt2 uses the GPT-2 style tied embedding (N(0, 0.02), logits unscaled) instead of T5's (N(0, 1), logits
* d_model^-1/2). --target A exits with status 1 when a preset ends below accuracy A.
"""
import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from miras.eval.compare import CompareConfig, run_config
from miras.data.mqar import MQAR
from miras.eval.mqar import mqar_accuracy
from miras.models import MirasLM
from miras.models.lm import cross_entropy
from miras.train.optim import build_optimizer, lr_at


def curve(preset: str, steps: int, every: int, lr: float, init: str) -> tuple[list[float], float]:
    """Held-out accuracy after every `every` steps (and the last), and the training seconds."""
    c = CompareConfig(presets=[preset], steps=steps, lr=lr)
    cfg = run_config(c, preset)
    torch.manual_seed(0)
    model = MirasLM(cfg.model)
    if init == "gpt2":
        torch.nn.init.normal_(model.embed.weight, std=0.02)
        model.logit_scale = 1.0
    task = MQAR(seq_len=c.seq_len, num_kv_pairs=c.pairs, vocab_size=c.vocab, batch_size=c.batch_size)
    opt = build_optimizer(model, cfg.optim)
    accuracy, train_s = [], 0.0
    for step in range(steps):
        start = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.optim)
        x, y = task.batch(step)
        loss = cross_entropy(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        opt.step()
        train_s += time.time() - start
        if (step + 1) % every == 0 or step + 1 == steps:
            accuracy.append(mqar_accuracy(model, task, n=256))
            print(f"{preset} step {step + 1} loss {loss.item():.3f} acc {accuracy[-1]:.3f} {train_s:.0f}s", flush=True)
    return accuracy, train_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="titans-lmm,moneta,yaad,memora")
    p.add_argument("--steps", type=int, default=850)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--init", choices=["gpt2", "t5"], default="t5")
    p.add_argument("--out", default="runs/mqar_curves.png", help="plot path (the CSV goes next to it)")
    p.add_argument("--target", type=float, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    presets = a.presets.split(",")
    steps = [s for s in range(a.every, a.steps + 1, a.every)] + ([a.steps] if a.steps % a.every else [])
    curves, seconds = {}, {}
    for preset in presets:
        curves[preset], seconds[preset] = curve(preset, a.steps, a.every, a.lr, a.init)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *presets])
        writer.writerows([s, *(f"{curves[p][i]:.4f}" for p in presets)] for i, s in enumerate(steps))
    print("\n| preset | " + " | ".join(f"acc@{s}" for s in steps[-4:]) + " | train s |")
    print("|---|" + "---|" * (len(steps[-4:]) + 1))
    for p_ in presets:
        print(f"| {p_} | " + " | ".join(f"{x:.3f}" for x in curves[p_][-4:]) + f" | {seconds[p_]:.0f} |")
    try:
        from miras.eval.plots import line_plot
        line_plot({p_: (steps, curves[p_]) for p_ in presets}, out, title=f"MQAR accuracy ({a.steps} steps)",
                  xlabel="step", ylabel="held-out accuracy")
        print(f"wrote {out} and {out.with_suffix('.csv')}")
    except ImportError:
        print(f"wrote {out.with_suffix('.csv')} (no matplotlib: no plot)")
    if a.target is not None:
        below = [p_ for p_ in presets if curves[p_][-1] < a.target]
        if below:
            print(f"below {a.target}: {', '.join(below)}")
            sys.exit(1)


if __name__ == "__main__":
    main()
