"""`miras search`: a search over the design space (memory x attentional bias x retention x algorithm x chunk size)
on the MQAR default of `miras compare`, under a budget of trials, wall-clock minutes and steps per trial.

Every trial is one point of the space: MirasConfig(preset="gated-deltanet", spec=<its tables>), a "memory" block
whose four axes and chunk size the spec replaces (miras/space/tables.py), with the sizes, data and optimizer of
`miras compare` (`compare.run_config`). Optuna's TPE sampler (seeded) proposes the points and its successive-halving
pruner schedules them: a trial trains to the first rung of steps, reports its MQAR accuracy and goes on to the next
rung (the trainer resumes its checkpoint with more steps) only while it is in the best 1/eta of the trials that
reached that rung. The learning rate is constant after the warmup, so a trial's first steps are the same at
every rung. Points the spec refuses (e.g. the delta rule with a deep memory: a ConfigError) are recorded as pruned
and invalid, points already trained are skipped; neither counts as a trial.

The study lives in OUT_DIR/study.db (SQLite): a search stopped at any moment (Ctrl-C, a kill, --minutes) continues
where it stopped when it is run again with the same flags (--trials, --minutes and --threads may change): the
trained trials are kept, a trial cut short is trained again from its first step. Outputs: leaderboard.md,
leaderboard.csv (every trained trial, best first) and pareto.png (accuracy vs recurrent state size, the Pareto
front highlighted) in OUT_DIR; each trial's run folder in OUT_DIR/trials/NNNN.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import ConfigError, require
from ..space.memory import matrix
from ..space.tables import AXES, axis_from_dict, axis_to_dict, parameters, registry
from .compare import CompareConfig, evaluate_mqar, markdown_table, run_config, state_floats
from .load import load_run

BASE_PRESET = "gated-deltanet"   # a preset whose block is "memory": the trial's spec replaces all of its axes
DEFAULT_SPACE = {
    "memory": ["matrix", {"name": "mlp", "depth": 2}],
    "bias": ["dot", "l2", {"name": "lp", "p": 3.0}, {"name": "lp", "p": 4.0}, "huber"],
    "retention": ["none", "decay", {"name": "lq", "q": 2.0}, {"name": "lq", "q": 4.0}, "kl"],
    "algorithm": ["gd", "momentum", "delta"],
    "chunk_size": [8, 16, 32],
}
MAX_POINTS = 20000               # a larger --space is refused (every point is checked before the search starts)
STUDY_NAME = "miras-search"
# the fields that define a study: a resumed search must give the same (trials, minutes, threads, out_dir may change)
STUDY_FIELDS = ("steps", "min_steps", "eta", "seq_len", "pairs", "vocab", "d_model", "heads", "n_layers",
                "batch_size", "lr", "eval_n", "seed")

HELP = {
    "trials": "trials to train in the study, over all runs of the search (points the spec refuses and repeats "
              "of a trained point do not count)",
    "minutes": "wall-clock budget of this run of the search, in minutes (0: none); a trial cut short by it is "
               "trained again when the search is resumed",
    "steps": "training steps of a trial that reaches the last rung",
    "min_steps": "steps of the first rung (0: steps // eta^2, i.e. three rungs: 150, 300, 600 by default)",
    "eta": "successive halving's reduction factor: a rung has eta times the steps of the one before, and a trial "
           "goes on only while it is in the best 1/eta at its rung",
    "space": "a .toml / .json / .yaml file with the choices of any axis (memory, bias, retention, algorithm: "
             "lists of names or tables of parameters) and chunk_size (a list of integers); axes it leaves out keep "
             "the default choices (see docs/evaluation.md)",
    "seq_len": "MQAR sequence length (training and accuracy)",
    "pairs": "MQAR key-value pairs per sequence",
    "vocab": "MQAR vocabulary",
    "d_model": "model width",
    "heads": "heads",
    "n_layers": "layers",
    "batch_size": "sequences per step",
    "lr": "AdamW learning rate (constant after the warmup)",
    "eval_n": "held-out MQAR sequences a trial's accuracy is measured on at each rung",
    "out_dir": "the study (study.db), the trials' run folders and the leaderboard; an existing one is resumed",
    "seed": "seed of the sampler, the data and the models",
    "threads": "torch threads (0: torch's default)",
}


@dataclass
class SearchConfig:
    trials: int = 16
    minutes: float = 15.0
    steps: int = 600
    min_steps: int = 0
    eta: int = 2
    space: str = ""
    seq_len: int = 64
    pairs: int = 4
    vocab: int = 64
    d_model: int = 64
    heads: int = 2
    n_layers: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    eval_n: int = 256
    out_dir: str = "runs/search"
    seed: int = 0
    threads: int = 0

    def __post_init__(self):
        """Every flag checked (the task's and the model's by CompareConfig) before anything is written."""
        for name, least, example in (("trials", 1, "--trials 8"), ("eta", 2, "--eta 3")):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= least, f"--{name}", value, f"an integer >= {least}",
                    f"e.g. {example}")
        require(isinstance(self.minutes, (int, float)) and math.isfinite(self.minutes) and self.minutes >= 0,
                "--minutes", self.minutes, "a number >= 0 (0: no wall-clock budget)", "e.g. --minutes 15")
        if isinstance(self.steps, int) and self.steps >= 1:
            require(isinstance(self.min_steps, int) and 0 <= self.min_steps <= self.steps, "--min-steps",
                    self.min_steps, f"an integer from 0 (steps // eta^2) to --steps={self.steps}", "e.g. --min-steps 50")
        if all(isinstance(v, int) and v >= 1 for v in (self.seq_len, self.pairs)):
            require(self.seq_len >= 4 * self.pairs, "--seq-len", self.seq_len, f">= 4 x --pairs = {4 * self.pairs} "
                    "(MQAR's pairs and queries)", "a longer --seq-len or fewer --pairs")
        self.compare_config()     # --steps, --seq-len, --lr, --threads, ...: compare's checks and messages

    def compare_config(self) -> CompareConfig:
        """The `miras compare` configuration of the trials (its run_config builds their RunConfig)."""
        return CompareConfig(presets=[BASE_PRESET], seq_len=self.seq_len, pairs=self.pairs, vocab=self.vocab,
                             d_model=self.d_model, heads=self.heads, n_layers=self.n_layers, steps=self.steps,
                             minutes=0.0, batch_size=self.batch_size, lr=self.lr, eval_n=self.eval_n,
                             eval_lengths=[self.seq_len], out_dir=str(Path(self.out_dir) / "trials"),
                             seed=self.seed, threads=self.threads)

    def rungs(self) -> list[int]:
        """The steps at which a trial reports its accuracy: min_steps x eta^k below steps, then steps."""
        step, out = self.min_steps or max(1, self.steps // self.eta ** 2), []
        while step < self.steps:
            out.append(step)
            step *= self.eta
        return out + [self.steps]


# -- the search space --------------------------------------------------------------------------------------------

def _fmt(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def choice_label(axis: str, table: dict) -> str:
    """A choice's compact name: its name plus its first parameter when that is a number (lp(p=3), lq(q=4)) and
    the parameters that differ from the defaults (mlp(expansion=2)); the 1-layer linear memory is "matrix"."""
    if axis == "memory" and table == axis_to_dict(matrix()):
        return "matrix"
    defaults = parameters(registry(axis)[table["name"]])
    first = next(iter(defaults), None)
    changed = [f"{k}={_fmt(v)}" for k, v in table.items() if k != "name" and (v != defaults.get(k) or (
        k == first and isinstance(v, float)))]
    return table["name"] + (f"({','.join(changed)})" if changed else "")


def spec_label(point: dict) -> str:
    """A point's compact string: 'memory bias retention algorithm c<chunk size>'."""
    return " ".join(point[axis] for axis in AXES) + f" c{point['chunk_size']}"


def load_space(path: str = "") -> dict:
    """{axis: {label: full table}, "chunk_size": [sizes]} of DEFAULT_SPACE, changed by the file at `path`."""
    data, where = dict(DEFAULT_SPACE), "--space"
    if path:
        from ..train.config import read_config_file
        require(Path(path).is_file(), "--space", path, "an existing .toml / .json / .yaml file with lists of "
                "choices per axis", "see `miras search` in docs/evaluation.md")
        where = f"--space {path}"
        try:
            given = read_config_file(path)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        unknown = sorted(set(given) - {*AXES, "chunk_size"})
        require(not unknown, where, unknown, f"the keys {[*AXES, 'chunk_size']}", "remove or rename them")
        data.update(given)
    space = {}
    for axis in AXES:
        choices = data[axis]
        require(isinstance(choices, list) and len(choices) >= 1, f"{where}: {axis}", choices,
                f"a non-empty list of {axis} names or tables of parameters",
                'e.g. bias = ["l2", {name = "lp", p = 3.0}]')
        space[axis] = {}
        for choice in choices:
            try:
                table = axis_to_dict(axis_from_dict(axis, choice))
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            space[axis].setdefault(choice_label(axis, table), table)
    sizes = data["chunk_size"]
    require(isinstance(sizes, list) and len(sizes) >= 1 and all(isinstance(s, int) and not isinstance(s, bool)
            and s >= 1 for s in sizes), f"{where}: chunk_size", sizes, "a non-empty list of integers >= 1",
            "e.g. chunk_size = [8, 16, 32]")
    space["chunk_size"] = sorted(set(sizes))
    points = math.prod(len(space[axis]) for axis in AXES) * len(space["chunk_size"])
    require(points <= MAX_POINTS, where, f"{points} points", f"at most {MAX_POINTS} points (the product of the "
            "axes' choices)", "give fewer choices")
    return space


def point_spec(space: dict, point: dict) -> dict:
    """The spec table (MirasConfig.spec) of a point ({axis: label, "chunk_size": int})."""
    return {**{axis: space[axis][point[axis]] for axis in AXES}, "chunk_size": point["chunk_size"]}


def all_points(space: dict) -> list[dict]:
    labels = [list(space[axis]) for axis in AXES]
    return [{**dict(zip(AXES, combo[:-1])), "chunk_size": combo[-1]}
            for combo in itertools.product(*labels, space["chunk_size"])]


def trial_run_config(base, spec: dict, run_dir: Path, steps: int, minutes: float):
    """The RunConfig of a trial from `base` (compare's MQAR run of BASE_PRESET, `compare.run_config`): the point's
    spec, trained to `steps` at a constant learning rate after compare's warmup (the same for every rung)."""
    return replace(base, model=replace(base.model, spec=spec, chunk_size=None),
                   optim=replace(base.optim, steps=steps, min_lr_ratio=1.0),
                   run=replace(base.run, out_dir=str(run_dir), max_minutes=minutes))


def invalid_points(c: SearchConfig, space: dict, base=None) -> dict[str, str]:
    """spec label -> the ConfigError of every point the spec refuses (the trials' model with the point's spec;
    checked once, before the search). base: the trials' base RunConfig, when the caller has it."""
    model = (base or run_config(c.compare_config(), BASE_PRESET)).model
    bad = {}
    for point in all_points(space):
        try:
            replace(model, spec=point_spec(space, point), chunk_size=None)
        except ConfigError as err:
            bad[spec_label(point)] = str(err)
    return bad


# -- measurements ------------------------------------------------------------------------------------------------

@torch.no_grad()
def decode_tok_s(model, length: int, vocab: int, steps: int = 32, warmup: int = 4) -> float:
    """One-token decode steps per second (batch 1) from the state after `length` tokens (`miras bench decode`'s
    timed loop)."""
    from ..bench.decode import decode
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(model.parameters()).device)
    _, states = model(ids)
    return steps / sum(decode(model, states, ids[:, -1:], steps, warmup))


# -- the study ---------------------------------------------------------------------------------------------------

def _optuna():
    try:
        import optuna
    except ImportError as err:
        raise ConfigError(f"miras search needs optuna ({err}): allowed with the search extra installed; fix: "
                          'pip install "miras[search]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class _Lock:
    """OUT_DIR/search.lock while a search runs there: a second search in the same folder is refused."""

    def __init__(self, out: Path):
        self.path = out / "search.lock"

    def __enter__(self):
        if self.path.is_file():                         # left by a search that runs, or by one that was killed
            host, _, pid = self.path.read_text().strip().partition(" ")
            alive = host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))
            require(not alive, "--out-dir", str(self.path.parent), f"a folder no other search is running in (process "
                    f"{pid} on this machine is)", "wait for it to finish, or use another --out-dir")
        self.path.write_text(f"{socket.gethostname()} {os.getpid()}\n")
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_study(c: SearchConfig, space: dict):
    """The study in OUT_DIR/study.db, new or resumed (ConfigError if it was made with other flags)."""
    optuna = _optuna()
    out = Path(c.out_dir)
    rungs = c.rungs()
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{(out / 'study.db').resolve()}", load_if_exists=True,
        direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=rungs[0],
                                                                           reduction_factor=c.eta))
    made_with = {**{k: getattr(c, k) for k in STUDY_FIELDS}, "space": {a: sorted(space[a]) for a in AXES},
                 "chunk_size": space["chunk_size"]}
    made_with = json.loads(json.dumps(made_with))
    saved = study.user_attrs.get("config")
    if saved is None:
        study.set_user_attr("config", made_with)
    else:
        differ = [k for k in made_with if saved.get(k) != made_with[k]]
        shown = "; ".join(f"{'--' + k.replace('_', '-') if k in STUDY_FIELDS else k} {saved.get(k)!r} there, "
                          f"{made_with[k]!r} now" for k in differ)
        require(not differ, "--out-dir", str(out), "the flags its study was made with (only --trials, --minutes "
                f"and --threads may change on resume); these differ: {shown}",
                "give the same flags to resume it, or another --out-dir for a new search")
    # a fixed seed, moved on by the trials already made: a resumed search does not repeat the first session's draws
    study.sampler = optuna.samplers.TPESampler(seed=c.seed + len(study.trials))
    return study


def _distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution
    return {**{axis: CategoricalDistribution(list(space[axis])) for axis in AXES},
            "chunk_size": CategoricalDistribution(space["chunk_size"])}


def _trained(study) -> list:
    return [t for t in study.trials if "acc" in t.user_attrs and t.state.is_finished() and
            t.state.name in ("COMPLETE", "PRUNED")]


def _counted(study) -> set[int]:
    """The trials that count towards --trials: trained (complete or pruned by the schedule) or failed in training."""
    return {t.number for t in _trained(study)} | {t.number for t in study.trials if "error" in t.user_attrs}


def _requeue_interrupted(study, out: Path) -> int:
    """Trials a stopped search left running (killed) or cut short (--minutes) are failed and queued again."""
    from optuna.trial import TrialState
    for t in study.trials:
        if t.state == TrialState.RUNNING:               # its process is gone (the lock said so)
            study.tell(t.number, state=TrialState.FAIL)
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    queued = 0
    for t in study.trials:
        if (t.state == TrialState.FAIL and "duplicate_of" not in t.user_attrs and "error" not in t.user_attrs
                and t.number not in retried):
            shutil.rmtree(out / "trials" / f"{t.number:04d}", ignore_errors=True)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            queued += 1
    return queued


def run_trial(c: SearchConfig, cc: CompareConfig, base, study, trial, spec: dict, label: str,
              deadline: float) -> str:
    """Trains one point rung by rung (base: the RunConfig of trial_run_config, cc: c.compare_config()); returns
    'complete', 'pruned', 'interrupted' (out of --minutes: trained again on resume) or 'failed' (the loss went
    non-finite: recorded with its error, counted as a trial, not retried)."""
    from optuna.trial import TrialState

    from ..train.config import load_resume_config
    from ..train.trainer import TrainingError, train
    run_dir = Path(c.out_dir) / "trials" / f"{trial.number:04d}"
    train_s, state, summary, acc = 0.0, "complete", {}, float("nan")
    for k, steps in enumerate(c.rungs()):
        left = deadline - time.time()
        if left <= 1:
            state = "interrupted"
            break
        minutes = 0.0 if math.isinf(left) else left / 60
        if k == 0:
            rc = trial_run_config(base, spec, run_dir, steps, minutes)
        else:                                           # the trainer's --resume: the run's config.json, more steps
            rc = load_resume_config(None, [f"run.out_dir={run_dir}", f"optim.steps={steps}",
                                           f"run.max_minutes={minutes}"])
        try:
            summary = train(rc, resume=k > 0, overwrite=k == 0)
        except (TrainingError, ConfigError) as err:    # a diverged point (non-finite loss), or one refused late
            trial.set_user_attr("error", str(err))
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} [{label}]: failed: {err}", flush=True)
            return "failed"
        train_s += summary.get("elapsed_s", 0.0)
        model = load_run(run_dir)[0]
        acc = evaluate_mqar(model, cc)[f"acc@{c.seq_len}"]
        trial.report(acc, summary["steps"])
        print(f"trial {trial.number} [{label}]: acc@{c.seq_len} {acc:.3f} at step {summary['steps']}", flush=True)
        if summary["steps"] < steps:
            state = "interrupted"
            break
        if k < len(c.rungs()) - 1 and trial.should_prune():
            state = "pruned"
            break
    if state == "interrupted":
        trial.set_user_attr("interrupted", "--minutes ran out")
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} [{label}]: cut short by --minutes; a resumed search trains it again", flush=True)
        return state
    attrs = {"spec": label, "status": state if state == "complete" else f"pruned at {summary['steps']}",
             "steps": summary["steps"], "acc": round(acc, 4), "state": state_floats(model, c.seq_len, c.vocab),
             "params": model.num_parameters(), "train_s": round(train_s, 1),
             "train_tok_s": round(summary.get("tokens_per_s", 0.0)),
             "decode_tok_s": round(decode_tok_s(model, c.seq_len, c.vocab))}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, acc)
    print(f"trial {trial.number} [{label}]: {attrs['status']}, acc@{c.seq_len} {acc:.3f}, state {attrs['state']} "
          f"floats, {attrs['train_s']} s", flush=True)
    return state


def search(c: SearchConfig) -> list[dict]:
    """Runs (or resumes) the search; writes leaderboard.md, leaderboard.csv and pareto.png to c.out_dir and
    returns the leaderboard rows, best first."""
    from optuna.trial import TrialState
    space = load_space(c.space)
    cc = c.compare_config()
    base = run_config(cc, BASE_PRESET)
    invalid = invalid_points(c, space, base)
    points = all_points(space)
    valid = [p for p in points if spec_label(p) not in invalid]
    require(bool(valid), "--space", c.space or "(default)", f"a space with a point the spec accepts (all {len(points)} "
            f"are refused, e.g. {next(iter(invalid.values()))})", "add choices that go together")
    _optuna()
    if c.threads:
        torch.set_num_threads(c.threads)
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out):
        study = open_study(c, space)
        requeued = _requeue_interrupted(study, out)
        distributions = _distributions(space)
        rng = random.Random(c.seed + len(study.trials))
        deadline = time.time() + 60 * c.minutes if c.minutes else math.inf
        counted = _counted(study)
        trained = {t.user_attrs["spec"]: t.number for t in study.trials if t.number in counted}
        goal = min(c.trials, len(valid))
        print(f"search: {len(valid)} valid points of {len(points)}; {len(trained)} of {goal} trials trained"
              + (f", {requeued} interrupted trial(s) queued again" if requeued else "")
              + f"; rungs {'/'.join(map(str, c.rungs()))} steps; study {out / 'study.db'}", flush=True)
        refused_in_a_row = 0
        while len(trained) < goal and time.time() < deadline:
            if refused_in_a_row >= 20:                 # the sampler keeps proposing refused or trained points
                untried = [p for p in valid if spec_label(p) not in trained]
                study.enqueue_trial(rng.choice(untried))
                refused_in_a_row = 0
            trial = study.ask(distributions)
            point = {**{axis: trial.params[axis] for axis in AXES}, "chunk_size": trial.params["chunk_size"]}
            label = spec_label(point)
            trial.set_user_attr("spec", label)
            if label in invalid:
                trial.set_user_attr("invalid", invalid[label])
                study.tell(trial, state=TrialState.PRUNED)
                refused_in_a_row += 1
                continue
            if label in trained:
                trial.set_user_attr("duplicate_of", trained[label])
                study.tell(trial, state=TrialState.FAIL)
                refused_in_a_row += 1
                continue
            refused_in_a_row = 0
            print(f"== trial {trial.number}: {label}", flush=True)
            state = run_trial(c, cc, base, study, trial, point_spec(space, point), label, deadline)
            if state == "interrupted":
                break
            trained[label] = trial.number             # complete, pruned or failed: the point is done
            write_leaderboard(c, study)
        rows = write_leaderboard(c, study)
        if rows:
            pareto_plot(rows, out / "pareto.png", c)
        if len(trained) < goal:
            print(f"search: stopped by --minutes with {len(trained)} of {goal} trials trained; run the same "
                  "command again to go on", flush=True)
    return rows


# -- outputs -----------------------------------------------------------------------------------------------------

def leaderboard(c: SearchConfig, study) -> list[dict]:
    """Every trained trial of the study, best accuracy first (then smaller state)."""
    trials = sorted(_trained(study), key=lambda t: (-t.user_attrs["acc"], t.user_attrs["state"], t.number))
    rows = []
    for rank, t in enumerate(trials, 1):
        a = t.user_attrs
        rows.append({"rank": rank, "trial": t.number, "spec": a["spec"], "status": a["status"], "steps": a["steps"],
                     f"acc@{c.seq_len}": a["acc"], f"state@{c.seq_len}": a["state"], "params": a["params"],
                     "train_tok_s": a["train_tok_s"], "decode_tok_s": a["decode_tok_s"]})
    return rows


def pareto_front(rows: list[dict], acc: str, state: str) -> list[dict]:
    """The rows no other row beats on both accuracy (higher) and state size (smaller), by state size."""
    front, best = [], -math.inf
    for row in sorted(rows, key=lambda r: (r[state], -r[acc])):
        if row[acc] > best:
            front.append(row)
            best = row[acc]
    return front


def write_leaderboard(c: SearchConfig, study) -> list[dict]:
    out = Path(c.out_dir)
    rows = leaderboard(c, study)
    if not rows:
        return rows
    complete = sum(r["status"] == "complete" for r in rows)
    header = (f"MQAR: seq_len {c.seq_len}, {c.pairs} pairs, vocab {c.vocab}; d_model {c.d_model}, {c.n_layers} layers, "
              f"{c.heads} heads (block: memory); batch {c.batch_size}, lr {c.lr} (constant after warmup); successive "
              f"halving, eta {c.eta}, rungs {'/'.join(map(str, c.rungs()))} steps; {len(rows)} trials trained "
              f"({complete} complete, {len(rows) - complete} pruned); accuracy over {c.eval_n} held-out sequences; "
              f"state: floats of recurrent state per sequence, all layers\n\n")
    failed = [t for t in study.trials if "error" in t.user_attrs]
    footer = "".join(f"\n- trial {t.number} ({t.user_attrs['spec']}) failed: {t.user_attrs['error'].split(';')[0]}"
                     for t in failed)
    (out / "leaderboard.md").write_text(header + markdown_table(rows) + "\n" + (
        f"\nNot in the table ({len(failed)} trial(s) that count towards --trials):{footer}\n" if failed else ""))
    with open(out / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def pareto_plot(rows: list[dict], path: Path, c: SearchConfig) -> Path | None:
    """Accuracy vs state size of every trained trial, the Pareto front highlighted (needs matplotlib)."""
    try:
        from .plots import _pyplot
        plt = _pyplot()
    except ImportError:
        print(f'note: {path} not written: matplotlib is not installed (pip install "miras[plots]")')
        return None
    acc, state = f"acc@{c.seq_len}", f"state@{c.seq_len}"
    front = pareto_front(rows, acc, state)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for status, color in (("complete", "tab:blue"), ("pruned", "lightgray")):
        chosen = [r for r in rows if r["status"].startswith(status)]
        ax.scatter([r[state] for r in chosen], [r[acc] for r in chosen], c=color, s=24, label=status, zorder=2)
    xs, ys = [r[state] for r in front], [r[acc] for r in front]
    ax.step(xs + [max(r[state] for r in rows) * 1.5], ys + ys[-1:], where="post", c="tab:red", lw=1.2, zorder=3,
            label="Pareto front (best accuracy at a state size or less)")
    ax.scatter(xs, ys, c="tab:red", s=30, zorder=4)
    for i, r in enumerate(front):
        right = i == len(front) - 1 and len(front) > 1
        ax.annotate(r["spec"], (r[state], r[acc]), fontsize=6, xytext=(-4 if right else 4, 5),
                    textcoords="offset points", ha="right" if right else "left")
    ax.axhline(1.0 / (c.vocab - c.vocab // 2), color="gray", linestyle="--", label="chance")
    ax.set_xscale("log", base=2)
    ax.set(title=f"miras search: MQAR accuracy vs recurrent state ({len(rows)} trained trials)",
           xlabel=f"state floats per sequence after {c.seq_len} tokens", ylabel=f"MQAR accuracy @ {c.seq_len}",
           ylim=(-0.03, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

