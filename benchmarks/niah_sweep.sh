#!/usr/bin/env bash
# S-NIAH: train each preset at 1K tokens on the pass-key task (7-digit number in the repeated-noise haystack,
# random depth, byte tokenizer), then score retrieval (RULER's string match, `miras eval`) at 1K, 2K, 4K, 8K
# and 5 depths.
#
#   bash benchmarks/niah_sweep.sh [MINUTES] [PRESETS...]       (defaults: 6 minutes; 5 presets)
#
# Writes runs/niah/<preset>/ (checkpoint, eval/results.json, eval/niah_heatmap.png). One thread per run.
set -euo pipefail
MINUTES="${1:-6}"; shift || true
PRESETS=("${@:-transformer mamba2 gated-deltanet titans-lmm moneta}")
MIRAS="${MIRAS:-.venv/bin/miras}"
for p in ${PRESETS[@]}; do
  "$MIRAS" train size= model.preset="$p" model.d_model=64 model.heads=2 model.n_layers=2 model.chunk_size=16 \
    model.d_state=32 data.task=niah data.seq_len=1024 optim.steps=100000 optim.batch_size=8 optim.lr=3e-3 \
    optim.warmup_steps=50 run.max_minutes="$MINUTES" run.eval_every=100000 run.log_every=50 run.threads=1 \
    run.out_dir="runs/niah/$p"
  "$MIRAS" eval "runs/niah/$p" --lengths 1024,2048,4096,8192 --depths 5 --needles 4 > "runs/niah/$p.eval.log"
  python3 - "$p" <<'PY'
import json, sys
p = sys.argv[1]
grid = json.load(open(f"runs/niah/{p}/eval/results.json"))["niah"]
acc = [sum(col) / len(col) for col in zip(*grid["accuracy"])]
print(p, " ".join(f"{n}:{a:.2f}" for n, a in zip(grid["lengths"], acc)))
PY
done
