"""`miras` command line: presets, demo, bench, train, eval, lm-eval, export, compare, search, plot."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .train.denormals import denormals_flushed


def _int_list(text: str) -> list[int]:
    """`--lengths 1024,2048` -> [1024, 2048] (the range is checked by the command)."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: allowed comma-separated integers; fix: e.g. "
                                         "1024,2048") from None


def _limit(text: str) -> int | float:
    """lm-eval's --limit: examples per task (an integer >= 1) or a fraction of them (a number in (0, 1))."""
    try:
        value = int(text) if text.isdigit() else float(text)
    except ValueError:
        value = None
    if value is None or not (value >= 1 if isinstance(value, int) else 0 < value < 1):
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: allowed an integer >= 1 (examples per task) or a "
                                         "fraction in (0, 1); fix: e.g. --limit 20 or --limit 0.1")
    return value


def _count(text: str) -> int:
    """A non-negative integer (--num-fewshot)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: allowed an integer >= 0; fix: e.g. 0 or 5")
    return int(text)


def _device(text: str) -> str:
    """A torch device string (cpu, cuda, cuda:1, mps, ...)."""
    try:
        kind = torch.device(text).type
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: allowed a torch device such as cpu, cuda, cuda:1 or "
                                         "mps; fix: e.g. --device cpu") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} is invalid here: allowed cpu (torch {torch.__version__} sees no "
                                         "GPU); fix: --device cpu, or run on a machine with a GPU")
    return text


def _device_or_auto(text: str) -> str:
    """auto (cuda when torch sees a GPU, else cpu) or a torch device string (see _device)."""
    return text if text == "auto" else _device(text)


def _presets(args) -> None:
    from .space import get_preset, list_presets
    if args.name:
        from .space.tables import preset_toml
        print(preset_toml(args.name), end="")
        return
    for name in list_presets():
        p = get_preset(name)
        ax = p.spec.axes()
        print(f"{name:17s} block={p.block:11s} memory={ax['memory']} | bias={ax['bias']} | "
              f"retention={ax['retention']} | algorithm={ax['algorithm']} | chunk={p.spec.chunk_size}")
    print("\n`miras presets NAME` prints a preset's spec as a config file: edit any axis or parameter, then "
          "`miras train --config FILE`")


def _demo(args) -> None:
    from .demo import format_table, run_demo
    rows = run_demo(args.seqlen, args.heads, args.d_head)   # checks the sizes before anything is printed
    print(f"Recurrent reference of every preset: batch 1, T={args.seqlen}, {args.heads} heads of dim {args.d_head}, "
          f"float32, {torch.get_num_threads()} threads\n")
    print(format_table(rows))


def _bench(args) -> None:
    args.bench_module.run_args(args.bench_module.check(args.bench_parser, args))


def _train(args) -> None:
    from .train.config import load_resume_config, load_run_config
    from .train.trainer import TrainingError, train
    if args.resume and args.overwrite:
        from .errors import ConfigError
        raise ConfigError("--resume and --overwrite are invalid together: allowed one of them; fix: --resume to "
                          "continue the run in run.out_dir, --overwrite to replace it with a fresh run")
    overrides = [*args.overrides, *([f"run.device={args.device}"] if args.device else []),
                 *(["run.compile=true"] if args.compile else [])]
    cfg = (load_resume_config if args.resume else load_run_config)(args.config, overrides)
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except TrainingError as err:  # the run itself failed (non-finite loss): one paragraph, exit code 1
        print(f"miras train: stopped: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    if summary.get("complete"):
        print(f"already complete: {summary['run_dir']} was trained to step {summary['steps']} of optim.steps="
              f"{cfg.optim.steps}, nothing to do (raise optim.steps to train further)")
    elif summary.get("run_dir"):
        print(f"done: {summary['steps']} steps, loss {summary.get('loss', float('nan')):.4f}, "
              f"val_loss {summary.get('val_loss', float('nan')):.4f}, run folder {summary['run_dir']}")


def _eval(args) -> None:
    from .eval.evaluate import evaluate_run
    results = evaluate_run(args.run, args.lengths, args.depths, args.needles, args.windows, args.tokenizer,
                           device=args.device)
    print(json.dumps(results, indent=2))
    print(f"written: {args.run}/eval/results.json and plots")


def _lm_eval(args) -> None:
    from .errors import ConfigError
    try:
        from .eval.lm_harness import evaluate, format_results
    except ImportError as err:  # the lmeval extra is not installed
        raise ConfigError(str(err)) from err
    results = evaluate(args.run, args.tasks, args.limit, batch_size=args.batch_size, device=args.device,
                       max_length=args.max_length, tokenizer=args.tokenizer, num_fewshot=args.num_fewshot,
                       log_samples=args.log_samples, out=args.out)
    print(format_results(results))
    if args.out:
        print(f"written: {args.out}")


def _export(args) -> None:
    from .errors import ConfigError
    try:
        import transformers  # noqa: F401
    except ImportError as err:  # the hf extra is not installed
        raise ConfigError(f"miras export needs transformers ({err}): pip install \"miras[hf]\"") from err
    from .models.export import export_run
    summary = export_run(args.run, args.out_dir, force=args.force, tokenizer=args.tokenizer)
    print(f"exported {args.run} ({Path(summary['checkpoint']).name}: {summary['preset']}, "
          f"{summary['parameters']:,} parameters, {summary['tokenizer']} tokenizer, eos id {summary['eos_id']}) "
          f"to {args.out_dir}:\n  {' '.join(summary['files'])}")
    print(f"load it: AutoModelForCausalLM.from_pretrained({args.out_dir!r}, trust_remote_code=True) "
          "(or without trust_remote_code after `import miras`)")


def _compare(args) -> None:
    from .eval.compare import CompareConfig, compare, markdown_table
    cfg = CompareConfig(**{k: v for k, v in vars(args).items() if k in CompareConfig.__dataclass_fields__})
    rows = compare(cfg)
    print("\n" + markdown_table(rows))
    print(f"\ntable, csv, results.json and plots (loss.png, accuracy_vs_length.png, throughput_vs_length.png) "
          f"in {cfg.out_dir}")


def _add_compare_flags(parser: argparse.ArgumentParser) -> None:
    from dataclasses import MISSING, fields

    from .eval.compare import DEFAULT_STEPS, STEPS, CompareConfig
    for f in fields(CompareConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, list):
            kind = int if default and isinstance(default[0], int) else str
            parser.add_argument(flag, type=_int_list if kind is int else lambda s: s.split(","), default=default,
                                help=f"comma-separated (default {','.join(map(str, default))})")
        elif default is None:                   # --chunk-size, --steps: each preset's own unless given
            budgets = f": {', '.join(f'{k} {v}' for k, v in STEPS.items())}, others {DEFAULT_STEPS}" if f.name == "steps" else ""
            parser.add_argument(flag, type=int, default=None, help=f"(default: each preset's own{budgets})")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"(default {default})")


def _search(args) -> None:
    from .eval.search import SearchConfig, search
    cfg = SearchConfig(**{k: v for k, v in vars(args).items() if k in SearchConfig.__dataclass_fields__})
    rows = search(cfg)
    if rows:
        from .eval.compare import markdown_table
        print("\n" + markdown_table(rows[:10]))
    print(f"\nleaderboard.md, leaderboard.csv, pareto.png and the study (study.db: run the same command again to "
          f"resume it) in {cfg.out_dir}")


def _add_search_flags(parser: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from .eval.search import HELP, SearchConfig
    for f in fields(SearchConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            help=f"{HELP[f.name]} (default {f.default if f.default != '' else 'none'})")


def _plot(args) -> None:
    from .eval.plots import training_curves
    print(f"written: {training_curves(args.run, args.out or f'{args.run}/loss.png')}")


def main(argv: list[str] | None = None) -> int:
    with denormals_flushed():            # before any parallel op, so that every CPU thread takes it (denormals.py)
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="miras", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    presets = sub.add_parser("presets", help="list the named models and their four axes; with a NAME, its spec as a "
                             "config file to edit")
    presets.add_argument("name", nargs="?", default=None, help="a preset: print its spec as a TOML model section")
    presets.set_defaults(fn=_presets)
    demo = sub.add_parser("demo", help="run every preset's recurrent reference on a random batch")
    demo.add_argument("--seqlen", type=int, default=64)
    demo.add_argument("--heads", type=int, default=2)
    demo.add_argument("--d-head", type=int, default=16)
    demo.set_defaults(fn=_demo)
    bench = sub.add_parser("bench", help="benchmarks: ops (every memory op against its recurrent reference), decode "
                                         "(prefill tok/s, decode ms/token and state memory at long contexts)")
    bench_sub = bench.add_subparsers(dest="what", required=True, metavar="{ops,decode}")
    from .bench import decode as bench_decode
    from .bench import ops as bench_ops
    for name, module, text in (("ops", bench_ops, "every memory op against its recurrent reference: tokens/s, "
                                "memory, roofline, the peers"),
                               ("decode", bench_decode, "every preset's prefill tok/s, decode ms/token and state "
                                "memory at long contexts")):
        sp = bench_sub.add_parser(name, help=text, description=module.__doc__.split("\n\n")[0],
                                  allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sp)
        sp.set_defaults(fn=_bench, bench_module=module, bench_parser=sp)
    train = sub.add_parser("train", help="train a model (config file + section.key=value overrides)")
    train.add_argument("--config", help="a .json / .toml / .yaml run config")
    train.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in "
                       "run.out_dir, with the run's own config.json (overrides: only steps, time budget, cadences)")
    train.add_argument("--overwrite", action="store_true", help="start a fresh run even if run.out_dir holds one "
                       "(its checkpoints, logs and caches are deleted)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train: the same as run.device=... "
                       "(default: the config's run.device, auto: cuda when there is a GPU)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model, the mini-batch memory ops "
                       "in segments: the same as run.compile=true (docs/training.md, 'Compiled ops': minutes of "
                       "compiling first, faster steps after)")
    train.add_argument("overrides", nargs="*", help="e.g. model.preset=moneta optim.steps=500 run.out_dir=runs/x")
    train.set_defaults(fn=_train)
    ev = sub.add_parser("eval", help="evaluate a run folder: perplexity by position + S-NIAH, or MQAR")
    ev.add_argument("run", help="the run.out_dir of a `miras train` run")
    ev.add_argument("--lengths", type=_int_list, default=[1024, 2048],
                    help="context lengths (comma-separated; default 1024,2048)")
    ev.add_argument("--depths", type=int, default=5, help="needle depths (default 5)")
    ev.add_argument("--needles", type=int, default=2, help="needles per (depth, length) cell (default 2)")
    ev.add_argument("--windows", type=int, default=4, help="perplexity windows (default 4)")
    ev.add_argument("--tokenizer", help="tokenizer folder, when the run has none")
    ev.add_argument("--device", type=_device_or_auto, default="auto",
                    help="auto (default: cuda when there is a GPU), cpu, cuda, cuda:1, ...")
    ev.set_defaults(fn=_eval)
    lme = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks on a run folder or checkpoint "
                                         '(pip install "miras[lmeval]")')
    lme.add_argument("run", help="a `miras train` run folder (newest checkpoint) or one of its step-* folders")
    lme.add_argument("--tasks", required=True, help="comma-separated lm-eval task names, e.g. the local "
                     "miras_shakespeare_mc,miras_shakespeare_ppl,miras_passkey")
    lme.add_argument("--limit", type=_limit,
                     help="examples per task (a number < 1: a fraction)")
    lme.add_argument("--batch-size", type=int, default=1, help="loglikelihood requests per forward (default 1)")
    lme.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    lme.add_argument("--max-length", type=int, help="longest context fed (default: the model's max_context, "
                                                    "unbounded for recurrent models)")
    lme.add_argument("--num-fewshot", type=_count, help="few-shot examples (default: the task's)")
    lme.add_argument("--tokenizer", help="tokenizer folder, when the run has none")
    lme.add_argument("--log-samples", action="store_true", help="keep every request and response in --out")
    lme.add_argument("--out", help="write lm-eval's results as JSON here")
    lme.set_defaults(fn=_lm_eval)
    exp = sub.add_parser("export", help="a run folder or checkpoint -> a Hugging Face folder (model, config, "
                                        'tokenizer) that transformers loads (pip install "miras[hf]")')
    exp.add_argument("run", help="a `miras train` run folder (newest checkpoint) or one of its step-* folders")
    exp.add_argument("out_dir", help="the folder to write (new or empty)")
    exp.add_argument("--force", action="store_true", help="write into a non-empty out_dir (files of the same "
                                                          "names are replaced, others stay)")
    exp.add_argument("--tokenizer", help="tokenizer folder or byte, when the run has none")
    exp.set_defaults(fn=_export)
    cmp_ = sub.add_parser("compare", help="train several presets on MQAR with one budget; table + plots")
    _add_compare_flags(cmp_)
    cmp_.set_defaults(fn=_compare)
    srch = sub.add_parser("search", help="search the design space on MQAR (optuna, successive halving) under a "
                          'budget; leaderboard + Pareto plot; resumable (pip install "miras[search]")')
    _add_search_flags(srch)
    srch.set_defaults(fn=_search)
    plot = sub.add_parser("plot", help="training curves of a run folder (PNG)")
    plot.add_argument("run")
    plot.add_argument("--out", help="PNG path (default RUN/loss.png)")
    plot.set_defaults(fn=_plot)
    for p in [parser, *sub.choices.values()]:
        p.allow_abbrev = False                          # --resum is an error, not --resume
    args = parser.parse_args(argv)
    from .errors import ConfigError
    try:
        args.fn(args)
    except ConfigError as err:  # bad input: one clear line, no traceback
        print(f"miras {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
