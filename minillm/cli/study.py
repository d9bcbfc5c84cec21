"""``minillm study`` (the architecture x objective study, one unit or all) and ``minillm rank``
(ranks of attention matrices, of random logits or of a checkpoint's model)."""
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import time

import numpy as np

from . import UsageError, open_checkpoint, usage_errors
from ..study import rank
from ..study.events import format_events
from ..study.plan import PRESETS, is_done, units
from ..study.results import chosen_rates, collect, format_sweep, report, sweep, write_outputs
from ..study.run import run_study as _run_study
from ..train.checkpoint import write_json_atomic
from ..train.trainer import Interrupted, TrainConfig, load_corpus


# ---- study -------------------------------------------------------------------------------------

def add_study_arguments(p):
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="smoke (seconds; for tests) | default (the study: 7-12 min per seed on 2 cores) | large (6x the budget)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per pair (default 1; 3 for error bars)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="units run in parallel processes, the cores split between them (default: %(default)s)")
    p.add_argument("--dask", metavar="ADDRESS", help="run the units on a Dask cluster: its scheduler's address "
                   "(tcp://host:8786) or scheduler file; DIR must be on a file system the workers share")
    p.add_argument("--out", metavar="DIR", help="study directory (default runs/study-PRESET)")
    p.add_argument("--unit", metavar="NAME", help="run only this unit (its source unit must be finished)")
    p.add_argument("--list-units", action="store_true", help="print the units, in dependency order, and exit")
    p.add_argument("--report", action="store_true", help="only print the table of the units finished so far")
    p.add_argument("--events", action="store_true", help="print how often each pair's batches make a fact's value "
                   "a loss target with its entity in view (events per token seen), and exit")
    p.add_argument("--tune", action="store_true", help="run the learning-rate sweep instead: each pair at 3 rates for "
                   "1/4 of its budget, seed 0; prints each pair's losses and the rate to put in the preset")
    p.add_argument("--force", action="store_true", help="start over in an existing study directory of another config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_study(args):
    for flag, value in (("--seeds", 1 if args.seeds is None else args.seeds), ("--jobs", args.jobs)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    cfg = dataclasses.replace(PRESETS[args.preset], seeds=args.seeds or PRESETS[args.preset].seeds)
    if args.events:
        print(format_events(cfg.world))
        return 0
    if args.dask and importlib.util.find_spec("distributed") is None:
        raise UsageError('--dask needs Dask, which is not installed: pip install "dask[distributed]"')
    out = args.out or os.path.join("runs", f"study-{args.preset}")
    _use_directory(out, cfg, args.force)
    if args.list_units:
        for u in units(cfg, args.tune):
            state = "done" if is_done(out, u.name) else "todo"
            print(f"{u.name:28s} {state:5s} minillm study --preset {args.preset} --seeds {cfg.seeds} --out {out} "
                  f"{'--tune ' * args.tune}--unit {u.name}")
        return 0
    if not args.report:
        start = time.perf_counter()
        try:
            with usage_errors():
                _run_study(cfg, out, args.jobs, args.unit, not args.no_progress, dask=args.dask, tune=args.tune,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
        except (Interrupted, KeyboardInterrupt):
            print(f"study interrupted: finished units are kept and the unit in flight resumes from its "
                  f"checkpoint; rerun the same command to continue", file=sys.stderr)
            return 130
        print(f"study: {time.perf_counter() - start:.0f} s of work this run", file=sys.stderr)
    if args.tune:
        found = sweep(cfg, out)
        write_json_atomic(os.path.join(out, "tune.json"), {"lr_sweep": found, "lr": chosen_rates(found)})
        print(f"{format_sweep(found)}\nsaved in {os.path.join(out, 'tune.json')}: set StudyConfig.lr and lr_sweep "
              f"of the preset (minillm/study/plan.py) to these")
        return 0
    summary = collect(cfg, out)
    write_outputs(summary, out)
    print(report(summary))
    print(f"results: {os.path.join(out, 'results.json')}, results.csv, report.md"
          + (", results.png" if os.path.exists(os.path.join(out, "results.png")) else ""))
    return 0


def _use_directory(out, cfg, force):
    """Make `out` the directory of study `cfg`: a UsageError if it holds a study of another
    config, unless `force` (then its units are deleted). Settings added since keep their defaults."""
    saved = os.path.join(out, "study.json")
    if os.path.exists(saved):
        with open(saved, encoding="utf-8") as f:
            old = json.load(f)
        if {**cfg.to_dict(), **old, "seeds": cfg.seeds} != cfg.to_dict():
            if not force:
                raise UsageError(f"{out} holds a study of another config; "
                                 "use --force to start over or another --out")
            shutil.rmtree(os.path.join(out, "units"), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    write_json_atomic(saved, cfg.to_dict())


# ---- rank --------------------------------------------------------------------------------------

def add_rank_arguments(p):
    p.add_argument("checkpoint", nargs="?", help="a checkpoint file or run directory (omit with --synthetic)")
    p.add_argument("--synthetic", action="store_true", help="random Q, K across logit scales, linear attention as control")
    p.add_argument("--n", type=int, default=64, help="sequence length of the synthetic matrices")
    p.add_argument("--d", type=int, default=8, help="head dimension of the synthetic Q and K")
    p.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.1, 1.0, 3.0], help="logit scales")
    p.add_argument("--batch", type=int, default=4, help="sequences of the world's validation text to average over")
    p.add_argument("--rtol", type=float, default=1e-6, help="numerical rank: singular values above rtol * largest")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def run_rank(args):
    if args.synthetic == bool(args.checkpoint):
        raise UsageError("give either a CHECKPOINT or --synthetic")
    if args.synthetic:
        with usage_errors():  # n >= 2 and d >= 1
            rows = rank.synthetic(args.n, args.d, tuple(args.scales), rtol=args.rtol)
        title = f"attention of random Q, K (n={args.n}, d={args.d}); linear attention has rank <= d"
    else:
        ck = open_checkpoint(args.checkpoint)
        with usage_errors():
            model = ck.build_model()
            seqs = _validation_sequences(ck, args.batch)
        rows = rank.model_ranks(model, seqs, args.rtol)
        title = f"attention of {args.checkpoint} ({model.arch}) on {len(seqs)} sequences of {seqs.shape[1]} tokens"
    print(json.dumps(rows, indent=1) if args.json else f"{title}\n{rank.format_table(rows)}")
    return 0


def _validation_sequences(ck, batch):
    """`batch` equal-length token sequences from the text the checkpoint was trained on."""
    corpus = load_corpus(TrainConfig.from_dict(ck.config, source=ck.path).resolved())
    docs = sorted(corpus.val, key=len, reverse=True)[:max(1, batch)]
    T = min(min(len(d) for d in docs), ck.model_config["max_len"])
    if T < 2:
        raise ValueError(f"validation text of {ck.path} is too short to measure attention ranks")
    return np.stack([np.asarray(d[:T], dtype=np.int64) for d in docs])
