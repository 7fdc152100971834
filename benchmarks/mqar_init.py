"""Ablation behind MirasLM's initialization: MQAR (64 tokens, 4 pairs, vocab 64; d_model 64, 2 layers, 2 heads)
with the GPT-2 style tied embedding (N(0, 0.02), logits unscaled) vs T5's (N(0, 1), logits * d_model^-1/2).

    python benchmarks/mqar_init.py --preset transformer --init gpt2 --steps 2000
    python benchmarks/mqar_init.py --preset transformer --init t5 --steps 2000

Prints held-out accuracy every 250 steps. AdamW lr 3e-3 (betas 0.9 / 0.95, weight decay 0.1), warmup 50,
cosine to 10 %, batch 32, gradient clip 1, one thread.
"""
import argparse
import math
import time

import torch

from miras.eval.mqar import MQAR, mqar_accuracy
from miras.models import MirasConfig, MirasLM
from miras.models.lm import cross_entropy


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="transformer")
    p.add_argument("--init", choices=["gpt2", "t5"], default="t5")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=3e-3)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset=a.preset, vocab_size=64, d_model=64, heads=2, n_layers=2, chunk_size=16,
                                window=64, segment=32, d_state=32))
    if a.init == "gpt2":
        torch.nn.init.normal_(model.embed.weight, std=0.02)
        model.logit_scale = 1.0
    task = MQAR(seq_len=64, num_kv_pairs=4, vocab_size=64, batch_size=32)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1, betas=(0.9, 0.95))
    start = time.time()
    for step in range(a.steps):
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (step + 1) / 50) * cosine
        x, y = task.batch(step)
        loss = cross_entropy(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 250 == 0:
            print(f"{a.preset} {a.init} step {step + 1} loss {loss.item():.3f} "
                  f"acc {mqar_accuracy(model, task, n=256):.3f} {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
