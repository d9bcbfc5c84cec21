"""`minillm study`: the architecture x objective grid of Wang et al. 2022, at toy scale.

The study pretrains the six pairs the paper trained (CD:FLM, CD:MLM, ND:PLM, ND:MLM,
ED:PLM, ED:MLM) on the built-in world, with budgets matched on tokens seen; ED has L
layers per stack against the decoders' L, about the same compute per token (the paper's
comparison). Each model is evaluated zero-shot on the held-out tasks by rank
classification, finetuned on the mixture of training tasks (loss on the answer only,
constant learning rate, dropout), and evaluated again. Two adaptations reuse weights with
a new mask and objective: LM-A (ND:MLM -> causal FLM) and NC-A (CD:FLM -> prefix MLM),
each compared with the from-scratch model of the same pair (the speed-up: tokens the
from-scratch run needed to reach its final validation loss / tokens the adapted run needed).

Every accuracy stands beside a *statement probe* (does the model know the held-out facts
at all? rank-classify the value after "the pet of X is a", and for MLM-trained models also
in their own format: the value as a sentinel's target), so that "never learned the facts"
is not mistaken for "did not transfer".

Work is split into units (stage x pair x seed). Each unit is one directory under
`OUT/units/` holding its checkpoint, log and `result.json`; a finished unit is skipped on
rerun, an interrupted one resumes from its checkpoint, and `--jobs N` runs independent
units in parallel processes. One unit is one command, so a scheduler can spread a grid
over machines: `minillm study --out DIR --list-units` prints them in dependency order, and
`minillm study --out DIR --unit NAME` runs one (its source unit must have finished).
"""
import csv
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from . import evaluate
from ..data.batches import PAPER_PAIRS, make_prompt_batch
from ..train.checkpoint import load_checkpoint, write_json_atomic

__all__ = ["StudyConfig", "PRESETS", "units", "make_trainer", "run_unit", "run_study", "collect", "format_table", "report", "tokens_to_reach",
           "conclusions", "add_arguments", "run"]


@dataclasses.dataclass
class StudyConfig:
    """Everything that defines a study. Model sizes come from the trainer preset of the same name."""

    preset: str = "default"             # model sizes: the trainer preset of this name
    world: str = "default"              # the built-in world's preset
    seeds: int = 1
    world_seed: int = 0
    pretrain_tokens: int = 0
    lr: dict = None                     # objective -> peak learning rate of pretraining
    adapt_tokens: int = 0
    finetune_tokens: int = 0
    finetune_lr: float = 5e-4
    finetune_dropout: float = 0.1
    finetune_batch: int = 64
    eval_every: int = 50                # steps between validation losses (the adaptation curves)
    eval_examples: int = 48             # examples per task template scored in evaluation

    def to_dict(self):
        return dataclasses.asdict(self)


PRESETS = {
    "smoke": StudyConfig("smoke", "smoke", pretrain_tokens=6_000, lr={"flm": 3e-3, "plm": 3e-3, "mlm": 3e-3},
                         adapt_tokens=3_000, finetune_tokens=4_000, finetune_batch=16, eval_every=4,
                         eval_examples=4),
    "default": StudyConfig("default", "default", pretrain_tokens=1_000_000, lr={"flm": 3e-3, "plm": 3e-3, "mlm": 3e-3},
                           adapt_tokens=500_000, finetune_tokens=200_000, eval_every=40),
    # the default world with six times the budget: enough for MLM to learn the facts?
    "large": StudyConfig("default", "default", pretrain_tokens=6_000_000, lr={"flm": 3e-3, "plm": 3e-3, "mlm": 3e-3},
                         adapt_tokens=3_000_000, finetune_tokens=400_000, eval_every=100),
}

ADAPTATIONS = {  # name: (source pair, new arch, new objective, from-scratch pair it is compared with)
    "lm-a": (("nd", "mlm"), "cd", "flm", ("cd", "flm")),
    "nc-a": (("cd", "flm"), "nd", "mlm", ("nd", "mlm")),
}


# ---- the units ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Unit:
    name: str             # e.g. "pretrain/cd-flm/s0"
    stage: str            # pretrain | adapt | finetune
    arch: str
    objective: str        # the objective it trains with (finetune: the source's pretraining objective)
    seed: int
    source: str = None    # the unit whose weights it starts from
    label: str = ""       # the row of the table

    @property
    def dirname(self):
        return self.name.replace("/", "_")


def units(cfg):
    """Every unit of a study, each after the unit it starts from."""
    out = []
    for s in range(cfg.seeds):
        pre = {p: Unit(f"pretrain/{p[0]}-{p[1]}/s{s}", "pretrain", p[0], p[1], s, label=_label(p)) for p in PAPER_PAIRS}
        out += pre.values()
        for name, (src, arch, obj, _) in ADAPTATIONS.items():
            out.append(Unit(f"adapt/{name}/s{s}", "adapt", arch, obj, s, pre[src].name, label=name.upper()))
        for p in PAPER_PAIRS:
            out.append(Unit(f"finetune/{p[0]}-{p[1]}/s{s}", "finetune", p[0], p[1], s, pre[p].name, _label(p)))
        for name, (_, arch, obj, _) in ADAPTATIONS.items():
            out.append(Unit(f"finetune/{name}/s{s}", "finetune", arch, obj, s, f"adapt/{name}/s{s}", name.upper()))
    return out


def _label(pair):
    return f"{pair[0].upper()}:{pair[1].upper()}"


def _unit_dir(out, unit):
    return os.path.join(out, "units", unit.dirname)


def _result_path(out, unit):
    return os.path.join(_unit_dir(out, unit), "result.json")


def is_done(out, unit):
    return os.path.exists(_result_path(out, unit))


# ---- running one unit --------------------------------------------------------------------------

def _train_config(cfg, unit, tokens, lr, **extra):
    from ..train.trainer import TrainConfig
    settings = dict(arch=unit.arch, objective=unit.objective, preset=cfg.preset, seed=unit.seed,
                    world_seed=cfg.world_seed, world_preset=cfg.world, tokens=tokens, lr=lr, eval_every=cfg.eval_every,
                    checkpoint_every=200)
    return TrainConfig(**{**settings, **extra})


class PromptStream:
    """Finetuning batches (prompt -> answer, loss on the answer only) as a pure function of
    the batch index: row k is example perm_e[k mod N] of epoch e = k div N."""

    def __init__(self, arch, pairs, tokenizer, batch_size, seed, src_eos):
        self.arch, self.pairs, self.tok = arch, pairs, tokenizer
        self.batch_size, self.seed, self.src_eos = batch_size, seed, src_eos

    def batch(self, index):
        n, rows = len(self.pairs), range(index * self.batch_size, (index + 1) * self.batch_size)
        perm = {}
        picked = []
        for k in rows:
            e = k // n
            if e not in perm:
                perm[e] = np.random.default_rng([self.seed, 5, e]).permutation(n)
            picked.append(self.pairs[perm[e][k % n]])
        return make_prompt_batch(self.arch, [p for p, _ in picked], [a for _, a in picked], self.tok,
                                 src_eos=self.src_eos)


def _src_eos(unit_chain_objective, arch):
    """ED models pretrained with MLM saw EOS closing the encoder input: keep that format."""
    return arch == "ed" and unit_chain_objective == "mlm"


def make_trainer(cfg, unit, out, world, progress=False):
    """The unit's Trainer, ready to fit: resumed from the unit's own checkpoint if it has
    one, else starting from its source unit's weights (adaptation, finetuning) or from scratch."""
    from ..train.trainer import Trainer, load_corpus
    d = _unit_dir(out, unit)
    resuming = os.path.exists(os.path.join(d, "checkpoint.npz"))
    if unit.stage == "finetune":
        tcfg = _train_config(cfg, unit, cfg.finetune_tokens, cfg.finetune_lr, schedule="constant", warmup=0.0,
                             dropout=cfg.finetune_dropout, batch_size=cfg.finetune_batch, eval_every=0)
    else:
        tcfg = _train_config(cfg, unit, cfg.pretrain_tokens if unit.stage == "pretrain" else cfg.adapt_tokens,
                             cfg.lr[unit.objective])
    corpus = load_corpus(tcfg.resolved())
    if resuming:
        trainer = Trainer.resume(d, corpus, progress=progress)
    else:
        trainer = Trainer(tcfg, corpus, d, progress=progress)
        if unit.source:  # the same weights; adaptation changes only the mask and the objective
            trainer.model.load_state_dict(_source_state(out, unit.source))
    if unit.stage == "finetune":
        src_eos = _src_eos(_chain_objective(unit), unit.arch)
        pairs = world.finetuning_examples(seed=unit.seed)
        trainer.stream = PromptStream(unit.arch, pairs, world.tokenizer, cfg.finetune_batch, unit.seed, src_eos)
        trainer.val_batches = [PromptStream(unit.arch, pairs, world.tokenizer, cfg.finetune_batch, unit.seed + 7919,
                                            src_eos).batch(0)]
    return trainer


def run_unit(cfg, unit, out, progress=False):
    """Train (or resume) and evaluate one unit; writes and returns its result dict."""
    from ..data.world import World
    start = time.perf_counter()
    os.makedirs(_unit_dir(out, unit), exist_ok=True)
    world = World(cfg.world, seed=cfg.world_seed)
    trainer = make_trainer(cfg, unit, out, world, progress)
    final = trainer.fit()
    model = trainer.model
    objective = _chain_objective(unit)
    result = {"unit": unit.name, "stage": unit.stage, "label": unit.label, "arch": unit.arch,
              "objective": unit.objective, "seed": unit.seed, "source": unit.source,
              "tokens_seen": trainer.tokens_seen, "final_val_loss": final["val_loss"],
              "curve": _curve(os.path.join(_unit_dir(out, unit), "log.jsonl")),
              "parameters": model.num_parameters(), "flops_per_token": model.flops_per_token(),
              **evaluate_model(model, unit.arch, world, cfg.eval_examples, _src_eos(objective, unit.arch))}
    result["probe"] = own_probe(result, _objectives_seen(unit))
    result["seconds"] = time.perf_counter() - start
    write_json_atomic(_result_path(out, unit), result)
    return result


def _chain_objective(unit):
    """The objective a unit's weights were last trained with before finetuning."""
    if unit.stage != "finetune":
        return unit.objective
    if unit.source.startswith("adapt/"):
        return ADAPTATIONS[unit.source.split("/")[1]][2]
    return unit.objective


def _objectives_seen(unit):
    """Every objective a unit's weights were trained with (an adaptation has two)."""
    name = unit.name.split("/")[1]
    if name in ADAPTATIONS:
        return {ADAPTATIONS[name][0][1], ADAPTATIONS[name][2]}
    return {unit.objective}


def own_probe(result, objectives):
    """The probe in the best format any of `objectives` trains: are the facts in the model at all?"""
    formats = (["mlm"] if "mlm" in objectives else []) + (["next", "decoder"] if objectives - {"mlm"} else [])
    return max(result.get(f"probe_{f}", 0.0) for f in formats)


def _source_state(out, source):
    path = os.path.join(out, "units", source.replace("/", "_"), "checkpoint.npz")
    if not os.path.exists(os.path.join(out, "units", source.replace("/", "_"), "result.json")):
        raise ValueError(f"unit {source!r} has not finished: run it first (minillm study --unit {source})")
    return load_checkpoint(path).model_state


def _curve(log_path):
    """(tokens, validation loss) pairs of a run's log."""
    points = []
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if "val_loss" in r:
                    points.append([r["tokens"], r["val_loss"]])
    return points


# ---- evaluation --------------------------------------------------------------------------------

def evaluate_model(model, arch, world, per_template, src_eos):
    """Zero-shot accuracy on held-out tasks, accuracy on training tasks, and statement probes.

    Probes rank-classify each held-out fact's value after its statement ("the pet of X is a"):
    `next` feeds the statement as the prompt (the encoder input for ED); `mlm` as T5 would
    (the value replaced by a sentinel, scored as the sentinel's target); `decoder` (ED only)
    feeds the first word to the encoder and the rest to the decoder, which is where a
    PLM-trained ED mostly sees facts stated. Choices then carry the shared statement rest in
    front, which adds the same log-probability to every choice and leaves the ranking as it is.
    `own_probe` picks the format the model's objectives train.
    """
    tok = world.tokenizer

    def task_accuracy(tasks):
        per = {}
        for task in tasks:
            per[task.name] = {i: evaluate.accuracy(model, arch, group[:per_template], tok, src_eos=src_eos)
                              for i, group in enumerate(task.by_template()) if group}
        return evaluate.summarise(per)

    def probe(kind):
        def examples(r):
            if kind != "decoder":
                return (world.mlm_probes if kind == "mlm" else world.probes)[r].examples
            return [(e.prompt[:1], [e.prompt[1:] + c for c in e.choices], e.answer) for e in world.probes[r].examples]
        return float(np.mean([evaluate.accuracy(model, arch, examples(r), tok, src_eos=src_eos)
                              for r in world.heldout_relations]))

    probes = {"next": probe("next"), "mlm": probe("mlm")}
    if arch == "ed":
        probes["decoder"] = probe("decoder")
    return {"heldout": task_accuracy(world.heldout_tasks), "train": task_accuracy(world.train_tasks),
            **{f"probe_{k}": v for k, v in probes.items()},
            "heldout_baseline": float(np.mean([t.random_baseline for t in world.heldout_tasks])),
            "probe_baseline": float(np.mean([1 / len(world.values[r]) for r in world.heldout_relations]))}


# ---- running the study ---------------------------------------------------------------------------

def _worker(args):
    cfg_dict, unit, out = args
    cfg = StudyConfig(**cfg_dict)
    return run_unit(cfg, unit, out)


def run_study(cfg, out, jobs=1, only=None, progress=True, log=print):
    """Run every unfinished unit (or just `only`), `jobs` at a time; a unit starts when its source is done."""
    todo = [u for u in units(cfg) if (only is None or u.name == only) and not is_done(out, u)]
    if only is not None and not todo and not any(u.name == only for u in units(cfg)):
        raise ValueError(f"unknown unit {only!r}; see --list-units")
    finished = []

    def started(u):
        log(f"[{time.strftime('%H:%M:%S')}] {u.name} ...")

    def ended(u, r):
        finished.append(u)
        log(f"[{time.strftime('%H:%M:%S')}] ({len(finished)}/{len(todo)}) {u.name} done in {r['seconds']:.0f}s: {_summary(r)}")

    if jobs <= 1:
        for u in todo:
            started(u)
            ended(u, run_unit(cfg, u, out, progress=progress))
        return
    import concurrent.futures as cf
    import multiprocessing as mp
    os.environ.setdefault("MINILLM_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    pending, running = list(todo), {}
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        while pending or running:
            for u in [u for u in pending if u.source is None or is_done(out, _unit(cfg, u.source))]:
                if len(running) >= jobs:
                    break
                pending.remove(u)
                running[pool.submit(_worker, (cfg.to_dict(), u, out))] = u
                started(u)
            if not running:
                raise ValueError(f"units {[u.name for u in pending]} wait for source units that have not finished")
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                u = running.pop(fut)
                ended(u, fut.result())


def _unit(cfg, name):
    return next(u for u in units(cfg) if u.name == name)


def _summary(r):
    return (f"val loss {r['final_val_loss']:.3f}, held-out {100 * r['heldout']['mean']:.1f}% "
            f"(random {100 * r['heldout_baseline']:.1f}%), probe {100 * r['probe']:.0f}%")


# ---- the results ---------------------------------------------------------------------------------

def _stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def collect(cfg, out):
    """Aggregate finished units into table rows (mean and spread over seeds)."""
    res = {}
    for u in units(cfg):
        if is_done(out, u):
            with open(_result_path(out, u), encoding="utf-8") as f:
                res[u.name] = r = json.load(f)
            r["probe"] = own_probe(r, _objectives_seen(u))
    rows = []
    for key in [f"{a}-{o}" for a, o in PAPER_PAIRS] + list(ADAPTATIONS):
        first = "adapt" if key in ADAPTATIONS else "pretrain"
        pre = [res.get(f"{first}/{key}/s{s}") for s in range(cfg.seeds)]
        fin = [res.get(f"finetune/{key}/s{s}") for s in range(cfg.seeds)]
        any_r = next((r for r in pre + fin if r), None)
        if any_r is None:
            continue
        row = {"row": any_r["label"] if key not in ADAPTATIONS else _adapt_label(key),
               "key": key, "parameters": any_r["parameters"], "flops_per_token": any_r["flops_per_token"],
               "zero_shot": _stat([r["heldout"]["mean"] for r in pre if r]),
               "probe": _stat([r["probe"] for r in pre if r]),
               "probe_prompt": _stat([r["probe_next"] for r in pre if r]),
               "finetuned": _stat([r["heldout"]["mean"] for r in fin if r]),
               "finetuned_train": _stat([r["train"]["mean"] for r in fin if r]),
               "probe_finetuned": _stat([r["probe_next"] for r in fin if r])}
        if key in ADAPTATIONS:
            base = ADAPTATIONS[key][3]
            pairs = [(res.get(f"pretrain/{base[0]}-{base[1]}/s{s}"), res.get(f"adapt/{key}/s{s}")) for s in range(cfg.seeds)]
            row["speedup"] = _stat([_speedup(b, a) for b, a in pairs])
            row["speedup_is_lower_bound"] = any(_speedup_is_bound(b, a) for b, a in pairs)
        rows.append(row)
    some = next(iter(res.values()), None)
    return {"config": cfg.to_dict(), "rows": rows, "units": res,
            "heldout_baseline": some["heldout_baseline"] if some else None,
            "probe_baseline": some["probe_baseline"] if some else None}


def _adapt_label(key):
    src, arch, obj, _ = ADAPTATIONS[key]
    return f"{key.upper()}: {_label(src)} -> {arch.upper()}:{obj.upper()}"


def tokens_to_reach(curve, target):
    """First number of tokens at which a (tokens, loss) curve reaches `target`, interpolated; None if never."""
    prev = None
    for t, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(t)
            (t0, l0) = prev
            return float(t0 + (t - t0) * (l0 - target) / (l0 - loss))
        prev = (t, loss)
    return None


def _speedup(baseline, adapted):
    """How many from-scratch tokens the adaptation was worth, per adaptation token.

    The tokens the from-scratch run (same pair, same seed, same validation batches) needed to
    reach the adapted model's final validation loss, divided by the tokens of adaptation.
    Above 1, adapting was cheaper than training from scratch. If the from-scratch run never
    got there, its whole budget is used and the ratio is a lower bound (`_speedup_is_bound`).
    """
    if not baseline or not adapted or not adapted["tokens_seen"]:
        return None
    need = tokens_to_reach(baseline["curve"], adapted["final_val_loss"])
    return (need if need is not None else baseline["tokens_seen"]) / adapted["tokens_seen"]


def _speedup_is_bound(baseline, adapted):
    return bool(baseline and adapted) and tokens_to_reach(baseline["curve"], adapted["final_val_loss"]) is None


def _fmt(stat, pct=True):
    if stat is None:
        return "-"
    k = 100 if pct else 1
    return f"{k * stat['mean']:.1f} ± {k * stat['std']:.1f}" if stat["n"] > 1 else f"{k * stat['mean']:.1f}"


def format_table(summary):
    cols = ["model", "params", "FLOPs/tok", "probe", "zero-shot", "finetuned", "ft train tasks", "speed-up"]
    lines = [[r["row"], f"{r['parameters'] / 1e6:.2f}M", f"{r['flops_per_token'] / 1e6:.2f}M", _fmt(r["probe"]),
              _fmt(r["zero_shot"]), _fmt(r["finetuned"]), _fmt(r["finetuned_train"]),
              ((">=" if r.get("speedup_is_lower_bound") else "") + _fmt(r["speedup"], pct=False) + "x")
              if r.get("speedup") else "-"]
             for r in summary["rows"]]
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)] if lines else [len(c) for c in cols]
    fmt = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    base = summary["heldout_baseline"]
    notes = [f"Accuracy in % on held-out tasks (rank classification, mean over templates then tasks); "
             f"random choice: {100 * base:.1f}%." if base is not None else "",
             f"probe: the held-out facts as statements (random {100 * summary['probe_baseline']:.1f}%), in the best "
             f"format the model's objectives train (MLM: the value as a sentinel's target; a PLM-trained ED: the "
             f"statement on the decoder side)." if base is not None else "",
             "speed-up: tokens the from-scratch pair needed to reach the adapted model's final validation loss, "
             "divided by the tokens of adaptation (above 1: adapting was cheaper than starting over)."]
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines] + [""] + [n for n in notes if n])


def conclusions(summary):
    """The paper's three conclusions, each with a verdict on this run: "REPRODUCED", "NOT
    reproduced", or "TIED" when the claimed winner and this run's winner are within one
    standard deviation of each other over seeds (the run cannot tell them apart)."""
    rows = {r["key"]: r for r in summary["rows"]}
    pairs = [f"{a}-{o}" for a, o in PAPER_PAIRS]
    if not all(rows.get(k, {}).get("zero_shot") for k in pairs):
        return []  # a comparison needs every pair

    def winner(metric, claimed):
        ranked = sorted(pairs, key=lambda k: -rows[k][metric]["mean"])
        top, want = rows[ranked[0]][metric], rows[claimed][metric]
        close = top["n"] > 1 and abs(top["mean"] - want["mean"]) < max(top["std"], want["std"])
        verdict = "REPRODUCED" if ranked[0] == claimed else ("TIED" if close else "NOT reproduced")
        scores = ", ".join(f"{rows[k]['row']} {100 * rows[k][metric]['mean']:.1f}" for k in ranked[:3])
        return verdict, f"top three here: {scores}" + ("" if top["n"] > 1 else " (one seed: no error bars)")

    out = [("1. CD:FLM is best zero-shot after self-supervised pretraining alone", *winner("zero_shot", "cd-flm"))]
    if all(rows[k].get("finetuned") for k in pairs):
        out.append(("2. ED:MLM (then ND:MLM) is best after multitask finetuning", *winner("finetuned", "ed-mlm")))
    nca = rows.get("nc-a", {})
    if nca.get("finetuned") and rows["nd-mlm"].get("finetuned"):
        fa, fb, sp = nca["finetuned"], rows["nd-mlm"]["finetuned"], nca.get("speedup")
        a, b = fa["mean"], fb["mean"]
        cheap = sp is not None and sp["mean"] > 1
        tie = a == b or (fa["n"] > 1 and abs(a - b) < max(fa["std"], fb["std"]))
        verdict = "TIED" if cheap and tie else ("REPRODUCED" if cheap and a > b else "NOT reproduced")
        out.append(("3. CD:FLM -> NC-A -> multitask gets a generative and a multitask model cheaply", verdict,
                    f"NC-A finetuned {100 * a:.1f}% vs ND:MLM from scratch {100 * b:.1f}%, adaptation "
                    f"speed-up {('%.1fx' % sp['mean']) if sp else 'unknown'}"))
    return out


def _probe_warnings(summary):
    """Plain words for the rows whose accuracy cannot show transfer, and why."""
    base = summary["probe_baseline"] or 0
    learned = lambda stat: stat and stat["mean"] >= base + 0.5 * (1 - base)  # noqa: E731
    out = []
    for r in summary["rows"]:
        if r.get("probe") and not learned(r["probe"]):
            how = "did not learn" if r["probe"]["mean"] < base + 0.1 else "learned only some of"
            out.append(f"{r['row']} {how} the held-out facts (probe {100 * r['probe']['mean']:.0f}%, "
                       f"random {100 * base:.0f}%): its zero-shot accuracy cannot show transfer.")
        elif r.get("probe_prompt") and not learned(r["probe_prompt"]):
            out.append(f"{r['row']} learned the held-out facts in its own format (probe {100 * r['probe']['mean']:.0f}%) "
                       f"but cannot recall them from a prompt ({100 * r['probe_prompt']['mean']:.0f}% with the statement "
                       f"as the prompt), the way the tasks ask.")
    return out


def report(summary):
    """The whole report as Markdown-friendly text: table, conclusions, warnings."""
    lines = ["# minillm study: architecture x objective at toy scale (Wang et al. 2022)", "",
             f"preset {summary['config']['preset']}, seeds {summary['config']['seeds']}, "
             f"pretraining {summary['config']['pretrain_tokens']:,} tokens seen per pair", "", "```",
             format_table(summary), "```", "", "## The paper's conclusions, checked", ""]
    done = [r for r in summary["rows"] if r.get("finetuned")]
    if done and summary["heldout_baseline"] is not None:
        top = max(done, key=lambda r: r["finetuned"]["mean"])
        gain = 100 * (top["finetuned"]["mean"] - summary["heldout_baseline"])
        lines.append(f"Best held-out accuracy after multitask finetuning: {top['row']} {_fmt(top['finetuned'])}%, "
                     f"{gain:+.1f} points over random choice.\n")
    for claim, verdict, why in conclusions(summary):
        lines.append(f"- {verdict}: {claim} — {why}")
    warn = _probe_warnings(summary)
    if warn:
        lines += ["", "## Caveats", ""] + [f"- {w}" for w in warn]
    return "\n".join(lines) + "\n"


def write_outputs(summary, out):
    write_json_atomic(os.path.join(out, "results.json"), {k: v for k, v in summary.items() if k != "units"})
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "parameters", "flops_per_token", "probe_mean", "probe_std", "zero_shot_mean",
                    "zero_shot_std", "finetuned_mean", "finetuned_std", "speedup_mean", "n_seeds"])
        for r in summary["rows"]:
            g = lambda k, s: "" if not r.get(k) else r[k][s]  # noqa: E731
            w.writerow([r["row"], r["parameters"], r["flops_per_token"], g("probe", "mean"), g("probe", "std"),
                        g("zero_shot", "mean"), g("zero_shot", "std"), g("finetuned", "mean"), g("finetuned", "std"),
                        g("speedup", "mean"), (r.get("zero_shot") or r.get("finetuned") or {}).get("n", "")])
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(report(summary))
    _plots(summary, out)


def _plots(summary, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, r in sorted(summary["units"].items()):
        if r["stage"] in ("pretrain", "adapt") and r["curve"] and r["seed"] == 0:
            t, loss = zip(*r["curve"])
            axes[0].plot(t, loss, label=f"{r['label']}{' (adapted)' if r['stage'] == 'adapt' else ''}")
    axes[0].set(xlabel="tokens seen", ylabel="validation loss (each in its own objective)", title="pretraining and adaptation, seed 0")
    axes[0].legend(fontsize=7)
    rows = summary["rows"]
    x = np.arange(len(rows))
    for off, key, lab in ((-0.2, "zero_shot", "after pretraining"), (0.2, "finetuned", "after finetuning")):
        axes[1].bar(x + off, [100 * r[key]["mean"] if r.get(key) else 0 for r in rows], 0.4, label=lab,
                    yerr=[100 * r[key]["std"] if r.get(key) else 0 for r in rows])
    if summary["heldout_baseline"] is not None:
        axes[1].axhline(100 * summary["heldout_baseline"], color="k", ls="--", label="random")
    axes[1].set_xticks(x, [r["row"].split(":")[0] if r["key"] in ADAPTATIONS else r["row"] for r in rows],
                       rotation=45, fontsize=7)
    axes[1].set(ylabel="held-out accuracy (%)", title="zero-shot, held-out tasks")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "results.png"), dpi=120)
    plt.close(fig)


# ---- command line ------------------------------------------------------------------------------

def add_arguments(p):
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="smoke (seconds; for tests) | default (the study: 7-12 min per seed on 2 cores) | large (6x the budget)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per pair (default 1; 3 for error bars)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="units run in parallel processes, the cores split between them (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="study directory (default runs/study-PRESET)")
    p.add_argument("--unit", metavar="NAME", help="run only this unit (its source unit must be finished)")
    p.add_argument("--list-units", action="store_true", help="print the units, in dependency order, and exit")
    p.add_argument("--report", action="store_true", help="only print the table of the units finished so far")
    p.add_argument("--force", action="store_true", help="start over in an existing study directory of another config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args):
    from ..cli import UsageError
    cfg = dataclasses.replace(PRESETS[args.preset])
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
        cfg.seeds = args.seeds
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    out = args.out or os.path.join("runs", f"study-{args.preset}")
    saved = os.path.join(out, "study.json")
    if os.path.exists(saved):
        with open(saved, encoding="utf-8") as f:
            old = json.load(f)
        now = cfg.to_dict()
        same = {**now, **old, "seeds": cfg.seeds} == now  # settings added since then keep their defaults
        if not same and not args.force:
            raise UsageError(f"{out} holds a study of another config; use --force to start over or another --out")
        if not same:
            import shutil
            shutil.rmtree(os.path.join(out, "units"), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    write_json_atomic(saved, cfg.to_dict())
    if args.list_units:
        for u in units(cfg):
            state = "done" if is_done(out, u) else "todo"
            print(f"{u.name:28s} {state:5s} minillm study --preset {args.preset} --seeds {cfg.seeds} --out {out} --unit {u.name}")
        return 0
    if args.unit and not any(u.name == args.unit for u in units(cfg)):
        raise UsageError(f"unknown unit {args.unit!r}; see --list-units")
    if not args.report:
        start = time.perf_counter()
        from ..train.trainer import Interrupted
        try:
            run_study(cfg, out, jobs=args.jobs, only=args.unit, progress=not args.no_progress,
                      log=lambda s: print(s, file=sys.stderr, flush=True))
        except ValueError as e:
            raise UsageError(str(e)) from None
        except (Interrupted, KeyboardInterrupt):
            print(f"study interrupted: finished units are kept and the unit in flight resumes from its "
                  f"checkpoint; rerun the same command to continue", file=sys.stderr)
            return 130
        print(f"study: {time.perf_counter() - start:.0f} s of work this run", file=sys.stderr)
    summary = collect(cfg, out)
    write_outputs(summary, out)
    print(report(summary))
    print(f"results: {os.path.join(out, 'results.json')}, results.csv, report.md"
          + (", results.png" if os.path.exists(os.path.join(out, "results.png")) else ""))
    return 0
