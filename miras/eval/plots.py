"""PNG plots (matplotlib, optional extra `plots`): one function per figure, each writes one file."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def line_plot(series: dict[str, tuple[list, list]], path: str | Path, title: str, xlabel: str, ylabel: str,
              logx: bool = False, hline: tuple[float, str] | None = None) -> Path:
    """series: name -> (xs, ys), one line each."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="gray", linestyle="--", label=hline[1])
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_image_path(path: str | Path) -> None:
    """ConfigError unless path names an image file (one of IMAGE_SUFFIXES) in an existing folder."""
    from ..errors import require
    path = Path(path)
    require(path.suffix.lower() in IMAGE_SUFFIXES, "--out", str(path), f"an image path ending in "
            f"{' / '.join(IMAGE_SUFFIXES)}", "e.g. --out loss.png")
    require(path.parent.is_dir() and not path.is_dir(), "--out", str(path), "a file in an existing folder",
            f"create {path.parent} first, or pass another path")


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl. A partial last line (a run killed while writing it) is skipped with a note on
    stderr; any other unreadable line is a ConfigError naming it."""
    import json
    import sys

    from ..errors import ConfigError, require
    path = Path(path)
    require(path.is_file(), "metrics file", str(path), "the metrics.jsonl of a `miras train` run",
            "pass a run folder that has trained at least run.log_every steps")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("kind"), str)
        except json.JSONDecodeError:
            ok = False
        if ok:
            rows.append(row)
        elif number == len(lines):
            print(f"note: skipped the partial last line {number} of {path} ({line[:40]!r}): the run was stopped "
                  "while writing it", file=sys.stderr)
        elif line.strip():
            raise ConfigError(f"{path} line {number}={line[:60]!r} is invalid: allowed one JSON object per line "
                              "as `miras train` writes it; fix: delete that line")
    return rows


def training_curves(run_dir: str | Path, path: str | Path) -> Path:
    """Train and validation loss of a `miras train` run (its metrics.jsonl) against elapsed minutes,
    with the corpus's unigram baseline."""
    from ..errors import require
    metrics = Path(run_dir) / "metrics.jsonl"
    rows = read_metrics(metrics)
    check_image_path(path)
    for row in rows:
        key = {"train": "loss", "val": "val_loss"}.get(row["kind"])
        require(key is None or all(isinstance(row.get(k), (int, float)) for k in ("elapsed_s", key)),
                f"{metrics} row", str(row)[:80], f"a {row['kind']} row with numbers elapsed_s and {key}, as `miras "
                "train` writes it", "delete that line")
    baseline = next((r["unigram_loss"] for r in reversed(rows) if "unigram_loss" in r), None)
    series = {kind: ([r["elapsed_s"] / 60 for r in rows if r["kind"] == kind],
                     [r[key] for r in rows if r["kind"] == kind]) for kind, key in (("train", "loss"), ("val", "val_loss"))}
    return line_plot(series, path, f"{Path(run_dir).name}: loss", "minutes", "loss (nats / token)",
                     hline=None if baseline is None else (baseline, "unigram baseline"))


def heatmap(grid: list[list[float]], rows: list, cols: list, path: str | Path, title: str, xlabel: str,
            ylabel: str) -> Path:
    """grid[i][j] in [0, 1] for rows[i] x cols[j] (e.g. needle depth x context length)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 1.2 + 0.35 * len(rows)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:.2f}" if isinstance(r, float) else str(r) for r in rows])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
