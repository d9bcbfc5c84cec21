"""Running a study: each unit trained (or resumed) and evaluated, units spread over processes.

A unit's trainer starts from its own checkpoint if it has one (an interrupted unit resumes),
else from its source unit's weights (adaptation, finetuning) or from scratch. Finetuning
feeds prompt -> answer batches with the loss on the answer only, at a constant learning
rate with dropout. After training, `evaluate_model` scores the held-out tasks zero-shot by
rank classification, the training tasks, and the statement probes (also at every
evaluation during pretraining and adaptation: `probe_curve`); the unit's
`result.json` then marks it done, so a rerun skips it.

Every runner claims a unit before running it (`run_claimed`, with the lock file of
`minillm/train/lock.py` in the unit's directory), so two runners on one study directory
(a retry, a second node, a job array) never run a unit twice: the second waits for the
first's result, and takes the unit over if the first died. `run_study` runs the unfinished
units `jobs` at a time in local processes, each once its source has finished, or as one
task each on a Dask cluster (`dask=ADDRESS`), each task after its source's.
"""
import dataclasses
import json
import os
import threading
import time

import numpy as np

from . import evaluate
from .plan import TUNE_SHARE, is_done, result_path, unit_dir, units
from ..data.batches import make_prompt_batch
from ..data.world import World
from ..engine import kernels
from ..train.checkpoint import load_checkpoint, write_json_atomic
from ..train.lock import claim
from ..train.trainer import Trainer, TrainConfig, load_corpus


# ---- running one unit --------------------------------------------------------------------------

class PromptStream:
    """Finetuning batches (prompt -> answer, loss on the answer only) as a pure function of
    the batch index: row k is example perm_e[k mod N] of epoch e = k div N."""

    def __init__(self, unit, pairs, tokenizer, batch_size, seed):
        self.arch, self.pairs, self.tok, self.src_eos = unit.arch, pairs, tokenizer, _src_eos(unit)
        self.batch_size, self.seed = batch_size, seed

    def batch(self, index):
        n, rows = len(self.pairs), range(index * self.batch_size, (index + 1) * self.batch_size)
        perm = {e: np.random.default_rng([self.seed, 5, e]).permutation(n) for e in {k // n for k in rows}}
        picked = [self.pairs[perm[k // n][k % n]] for k in rows]
        return make_prompt_batch(self.arch, *zip(*picked), self.tok, src_eos=self.src_eos)


def _src_eos(unit):
    """ED models trained with MLM saw EOS closing the encoder input: keep that format."""
    return unit.arch == "ed" and unit.objective == "mlm"


def make_trainer(cfg, unit, out, world, progress=False):
    """The unit's Trainer, ready to fit: resumed from the unit's own checkpoint if it has
    one, else starting from its source unit's weights (adaptation, finetuning) or from scratch."""
    d = unit_dir(out, unit.name)
    tcfg = TrainConfig(arch=unit.arch, objective=unit.objective, preset=cfg.preset, seed=unit.seed,
                       world_seed=cfg.world_seed, world_preset=cfg.world,
                       lr=unit.lr or cfg.lr[f"{unit.arch}-{unit.objective}"],
                       tokens={"pretrain": cfg.pretrain_tokens, "adapt": cfg.adapt_tokens, "finetune": cfg.finetune_tokens,
                               "tune": cfg.pretrain_tokens // TUNE_SHARE}[unit.stage],
                       eval_every=cfg.eval_every, checkpoint_every=200)
    if unit.stage == "finetune":  # prompt -> answer batches (below) at a constant learning rate, with dropout
        tcfg = dataclasses.replace(tcfg, lr=cfg.finetune_lr, schedule="constant",
                                   warmup=0.0, dropout=cfg.finetune_dropout, batch_size=cfg.finetune_batch,
                                   eval_every=0)
    corpus = load_corpus(tcfg.resolved())
    if os.path.exists(os.path.join(d, "checkpoint.npz")):
        trainer = Trainer.resume(d, corpus, progress=progress)
    else:
        trainer = Trainer(tcfg, corpus, d, progress=progress)
        if unit.source:  # the same weights; adaptation changes only the mask and the objective
            trainer.model.load_state_dict(source_state(out, unit.source))
    if unit.stage != "finetune":   # the own-format probe at every evaluation: how fast are the facts learned?
        trainer.eval_extra = lambda model: {"probe": max(probes(model, unit.arch, world, _src_eos(unit),
                                                                own_formats(unit.objectives)).values())}
    else:
        pairs = world.finetuning_examples(seed=unit.seed)
        stream = lambda seed: PromptStream(unit, pairs, world.tokenizer, cfg.finetune_batch, seed)  # noqa: E731
        trainer.stream, trainer.val_batches = stream(unit.seed), [stream(unit.seed + 7919).batch(0)]
    return trainer


def source_state(out, source):
    """The weights of finished unit `source`; a ValueError if it has not finished."""
    if not is_done(out, source):
        raise ValueError(f"unit {source!r} has not finished: run it first (minillm study --unit {source})")
    return load_checkpoint(os.path.join(unit_dir(out, source), "checkpoint.npz")).model_state


def run_unit(cfg, unit, out, progress=False):
    """Train (or resume) and evaluate one unit; writes and returns its result dict."""
    start = time.perf_counter()
    world = World(cfg.world, seed=cfg.world_seed)
    trainer = make_trainer(cfg, unit, out, world, progress)
    final = trainer.fit()
    with open(trainer.path("log.jsonl"), encoding="utf-8") as f:   # fit always logs a last val loss
        evals = [r for r in map(json.loads, f) if "val_loss" in r]
    curve = [[r["tokens"], r["val_loss"]] for r in evals]
    probe_curve = [[r["tokens"], r["probe"]] for r in evals if "probe" in r]
    result = {"unit": unit.name, "stage": unit.stage, "label": unit.label, "arch": unit.arch,
              "objective": unit.objective, "seed": unit.seed, "source": unit.source,
              "tokens_seen": trainer.tokens_seen, "final_val_loss": final["val_loss"],
              "curve": curve, "probe_curve": probe_curve,
              "parameters": trainer.model.num_parameters(), "flops_per_token": trainer.model.flops_per_token(),
              **evaluate_model(trainer.model, unit.arch, world, cfg.eval_examples, _src_eos(unit))}
    result["probe"] = own_probe(result, unit.objectives)
    result["seconds"] = time.perf_counter() - start
    write_json_atomic(result_path(out, unit.name), result)
    return result


# ---- evaluation --------------------------------------------------------------------------------

GROUPS = ("train", "heldout_relation", "heldout_type")


def evaluate_model(model, arch, world, per_template, src_eos):
    """Accuracy on the training tasks and, zero-shot, on the held-out relations and held-out
    task types (see ``minillm.data.world``), each beside its random-choice and best-constant
    floors computed from the same items (the first ``per_template`` of each template); the
    probes; and ``heldout``, the mean over every held-out task."""
    tok = world.tokenizer

    def group(tasks):
        items = {t.name: {i: g[:per_template] for i, g in enumerate(t.by_template()) if g} for t in tasks}
        scored = lambda fn: evaluate.summarise({n: {i: fn(ex) for i, ex in d.items()} for n, d in items.items()})  # noqa: E731
        out = scored(lambda ex: evaluate.accuracy(model, arch, ex, tok, src_eos=src_eos))
        return {**out, "random": scored(evaluate.random_baseline)["mean"],
                "constant": scored(evaluate.constant_baseline)["mean"]}

    result = {g: group([t for t in world.tasks if t.split == g]) for g in GROUPS}
    result["heldout"] = group(world.heldout_tasks)
    return {**result, **probes(model, arch, world, src_eos)}


def probes(model, arch, world, src_eos, formats=("next", "mlm")):
    """Statement probes on the held-out relations' facts, each fact's statement at the end of a
    row of the entity's other facts: `next` rank-classifies the value after "... the pet of X
    is a" (the encoder input for ED), `mlm` as T5 would (the value a sentinel, scored as the
    sentinel's target). `own_probe` picks the format the model's objectives train."""
    sets = {"next": world.probes, "mlm": world.mlm_probes}
    return {f"probe_{f}": float(np.mean([evaluate.accuracy(model, arch, sets[f][r].examples, world.tokenizer,
                                                           src_eos=src_eos) for r in world.heldout_relations]))
            for f in formats}


def own_formats(objectives):
    """The probe formats `objectives` train: MLM's sentinel format, FLM's and PLM's next token."""
    return (["mlm"] if "mlm" in objectives else []) + (["next"] if objectives - {"mlm"} else [])


def own_probe(result, objectives):
    """The probe in the best format any of `objectives` trains: are the facts in the model at all?"""
    return max(result.get(f"probe_{f}", 0.0) for f in own_formats(objectives))


# ---- running the study ---------------------------------------------------------------------------

def run_claimed(cfg, unit, out, progress=False, poll=2.0):
    """Run `unit` under its claim and return its result; while another runner holds the claim, wait
    (checking every `poll` seconds) for that runner's result, or for its claim to go stale."""
    while not is_done(out, unit.name):
        os.makedirs(unit_dir(out, unit.name), exist_ok=True)
        with claim(os.path.join(unit_dir(out, unit.name), "claim")) as mine:
            if mine and not is_done(out, unit.name):
                return run_unit(cfg, unit, out, progress)
        time.sleep(poll)
    with open(result_path(out, unit.name), encoding="utf-8") as f:
        return json.load(f)


def _after_source(cfg, unit, out):
    """Run `unit` under its claim once its source is done: waiting for the runner that holds the
    source's claim, or running the source here if no one is (as the local processes do)."""
    if unit.source:
        _after_source(cfg, next(u for u in units(cfg) if u.name == unit.source), out)
    return run_claimed(cfg, unit, out)


def run_study(cfg, out, jobs=1, only=None, progress=True, log=print, dask=None, tune=False):
    """Run every unfinished unit (or just `only`, whose source must be done) in order in this process,
    in `jobs` processes, or on the Dask cluster at address `dask`; a unit starts once its source is done.
    `tune`: the units of the learning-rate sweep instead."""
    if only is not None and all(u.name != only for u in units(cfg, tune)):
        raise ValueError(f"unknown unit {only!r}; see --list-units")
    todo = [u for u in units(cfg, tune) if (only is None or u.name == only) and not is_done(out, u.name)]
    finished = []

    def ended(r):
        finished.append(r)
        log(f"[{time.strftime('%H:%M:%S')}] ({len(finished)}/{len(todo)}) {r['unit']} done in {r['seconds']:.0f}s: "
            f"val loss {r['final_val_loss']:.3f}, held-out {100 * r['heldout']['mean']:.1f}% "
            f"(best constant {100 * r['heldout']['constant']:.1f}%), probe {100 * r['probe']:.0f}%")

    if dask:
        return _run_dask(dask, cfg, out, todo, ended, log)
    if jobs <= 1:
        for u in todo:
            ended(run_claimed(cfg, u, out, progress))
        return
    import concurrent.futures as cf
    import multiprocessing as mp
    os.environ.setdefault("MINILLM_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    run = run_claimed if only else _after_source   # `only`: its source must be done already
    try:   # in order: a unit's source is taken up before the unit, whose process then waits for it
        for task in cf.as_completed([pool.submit(run, cfg, u, out) for u in todo]):
            ended(task.result())
    finally:
        pool.shutdown(cancel_futures=True)


def _run_dask(address, cfg, out, todo, ended, log):
    """Each unit one task on the Dask cluster at `address` (or scheduler file), after its source's task.
    Leaving (an error, Ctrl-C) releases the tasks that have not started; a running unit still finishes."""
    from distributed import Client, as_completed
    with Client(scheduler_file=address) if os.path.isfile(address) else Client(address) as client:
        log(f"[{time.strftime('%H:%M:%S')}] {len(todo)} units sent to {client.scheduler.address}")
        tasks = {}
        for u in todo:   # the source's task is an argument, so Dask starts a unit once its source is done
            tasks[u.name] = client.submit(_dask_unit, cfg, u, out, tasks.get(u.source), pure=False)
        for task in as_completed(tasks.values()):
            ended(task.result())


_one_at_a_time = threading.Lock()


def _dask_unit(cfg, unit, out, _source_result=None):
    """A unit as a Dask task: one at a time per worker process, with as many threads as the worker has
    (its share of the machine's cores, as `--jobs` gives), unless the worker's MINILLM_NUM_THREADS says."""
    from distributed import get_worker
    threads = os.environ.setdefault("MINILLM_NUM_THREADS", str(get_worker().state.nthreads))
    with _one_at_a_time:
        kernels.set_num_threads(int(threads))
        return run_claimed(cfg, unit, out)
