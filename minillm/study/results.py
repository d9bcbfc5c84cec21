"""The results of a study: finished units gathered into a table, checked against the paper, written out.

`collect` reads every finished unit's `result.json` and aggregates each row of the table
(the six pairs, then the two adaptations) over seeds: mean, standard deviation and count.
`format_table` and `report` render it as text (what `minillm study` prints, also
`report.md`); `conclusions` gives a verdict on each of the paper's three claims;
`write_outputs` writes `results.json`, `results.csv`, `report.md` and, with matplotlib,
`results.png`.
"""
import csv
import json
import os

import numpy as np

from .plan import ADAPTATIONS, is_done, label, result_path, units
from .run import GROUPS, own_probe
from ..data.batches import PAPER_PAIRS
from ..train.checkpoint import write_json_atomic


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
        if is_done(out, u.name):
            with open(result_path(out, u.name), encoding="utf-8") as f:
                res[u.name] = r = json.load(f)
            r["probe"] = own_probe(r, u.objectives)
    rows = []
    for key in [f"{a}-{o}" for a, o in PAPER_PAIRS] + list(ADAPTATIONS):
        first = "adapt" if key in ADAPTATIONS else "pretrain"
        pre = [res[n] for n in (f"{first}/{key}/s{s}" for s in range(cfg.seeds)) if n in res]
        fin = [res[n] for n in (f"finetune/{key}/s{s}" for s in range(cfg.seeds)) if n in res]
        if not pre + fin:
            continue
        any_r = (pre + fin)[0]
        mean = lambda runs, k: _stat([r[k] if k == "probe" else r[k]["mean"] for r in runs])  # noqa: E731
        row = {"row": any_r["label"], "key": key,
               "parameters": any_r["parameters"], "flops_per_token": any_r["flops_per_token"],
               "probe": mean(pre, "probe"), "probe_prompt": _stat([r["probe_next"] for r in pre]),
               "zero_shot": mean(pre, "heldout_type"), "zero_shot_relations": mean(pre, "heldout_relation"),
               "finetuned": mean(fin, "heldout_type"), "finetuned_relations": mean(fin, "heldout_relation"),
               "finetuned_train": mean(fin, "train"), "lr": cfg.lr.get(key)}
        if key in ADAPTATIONS:
            src, arch, obj, base = ADAPTATIONS[key]
            row["row"] = f"{key.upper()}: {label(src)} -> {arch.upper()}:{obj.upper()}"
            speedups = [_speedup(res.get(f"pretrain/{base[0]}-{base[1]}/s{s}"), res.get(f"adapt/{key}/s{s}"))
                        for s in range(cfg.seeds)]
            row["speedup"] = _stat([sp for sp, _ in speedups])
            row["speedup_is_lower_bound"] = any(bound for _, bound in speedups)
        rows.append(row)
    some = next(iter(res.values()), None)   # every unit is scored on the same items: the same floors
    floors = {g: {b: some[g][b] for b in ("random", "constant")} for g in GROUPS} if some else None
    return {"config": cfg.to_dict(), "rows": rows, "units": res, "baselines": floors,
            "probe_baseline": some and float(np.mean([1 / len(v) for v in _world(cfg).values.values()]))}


def _world(cfg):
    from ..data.world import World
    return World(cfg.world, seed=cfg.world_seed)


def sweep(cfg, out):
    """The finished units of the learning-rate sweep: {pair: {rate: [final val loss, own-format probe]}}."""
    found = {}
    for u in units(cfg, tune=True):
        if is_done(out, u.name):
            with open(result_path(out, u.name), encoding="utf-8") as f:
                r = json.load(f)
            found.setdefault(f"{u.arch}-{u.objective}", {})[f"{u.lr:g}"] = [r["final_val_loss"], r["probe"]]
    return found


def chosen_rates(found):
    """Each pair's rate in a sweep: the lowest validation loss (its own objective, the same batches) among
    the rates whose probe is within 0.1 of the pair's best probe (a lower loss does not always mean more
    facts learned: at 3e-3 ED:PLM reached a lower loss than at 1e-3 with a probe of 23% against 100%)."""
    def pick(runs):
        best = max(probe for _, probe in runs.values())
        return float(min((rate for rate in runs if runs[rate][1] >= best - 0.1), key=lambda rate: runs[rate][0]))
    return {pair: pick(runs) for pair, runs in found.items()}


def format_sweep(found):
    chosen = chosen_rates(found)
    lines = ["pair     " + "".join(f"{'lr ' + rate:>20s}" for rate in next(iter(found.values()), {})) + "   chosen"]
    for pair, runs in found.items():
        lines.append(f"{pair:9s}" + "".join(f"{f'{loss:.3f} ({100 * probe:.0f}%)':>20s}" for loss, probe in runs.values())
                     + f"   {chosen[pair]:g}")
    return "\n".join(lines + ["(final validation loss, and own-format probe in brackets, after 1/4 of the "
                              "pretraining budget, seed 0; chosen: the lowest loss among the rates whose probe is within 10 "
                              "points of the pair's best)"])


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
    """How many from-scratch tokens the adaptation was worth, per adaptation token, and
    whether that is only a lower bound: ``(speed-up or None, is_lower_bound)``.

    The tokens the from-scratch run (same pair, same seed, same validation batches) needed to
    reach the adapted model's final validation loss, divided by the tokens of adaptation.
    Above 1, adapting was cheaper than training from scratch. If the from-scratch run never
    got there, its whole budget is used and the ratio is a lower bound.
    """
    if not baseline or not adapted:
        return None, False
    need = tokens_to_reach(baseline["curve"], adapted["final_val_loss"])
    total = need if need is not None else baseline["tokens_seen"]
    return (total / adapted["tokens_seen"] if adapted["tokens_seen"] else None), need is None


def _fmt(stat, pct=True):
    if stat is None:
        return "-"
    k = 100 if pct else 1
    return f"{k * stat['mean']:.1f} ± {k * stat['std']:.1f}" if stat["n"] > 1 else f"{k * stat['mean']:.1f}"


def format_table(summary):
    cols = ["model", "params", "FLOPs/tok", "lr", "probe", "zero-shot types", "relations", "finetuned types",
            "relations", "train tasks", "speed-up"]
    lines = [[r["row"], f"{r['parameters'] / 1e6:.2f}M", f"{r['flops_per_token'] / 1e6:.2f}M",
              f"{r['lr']:g}" if r.get("lr") else "-", _fmt(r["probe"]), _fmt(r["zero_shot"]),
              _fmt(r["zero_shot_relations"]), _fmt(r["finetuned"]), _fmt(r["finetuned_relations"]),
              _fmt(r["finetuned_train"]),
              ((">=" if r.get("speedup_is_lower_bound") else "") + _fmt(r["speedup"], pct=False) + "x")
              if r.get("speedup") else "-"]
             for r in summary["rows"]]
    floors = summary["baselines"]
    if floors:
        for name in ("random", "constant"):
            lines.append([f"(best {name} answer)" if name == "constant" else "(random choice)", "", "", "",
                          f"{100 * summary['probe_baseline']:.1f}" if name == "random" else "", *(
                f"{100 * floors[g][name]:.1f}" for g in ("heldout_type", "heldout_relation")), *(
                f"{100 * floors[g][name]:.1f}" for g in ("heldout_type", "heldout_relation", "train")), ""])
    widths = [max(map(len, column)) for column in zip(cols, *lines)]
    fmt = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    notes = ["Accuracy in % (rank classification, mean over templates then tasks; ± is the sd over seeds). "
             "zero-shot: after pretraining alone; finetuned: after multitask finetuning on the training tasks. "
             "types: the held-out task types (read, choice) that no finetuning example shows; relations: the "
             "trained task types on the held-out relations; train tasks: the finetuning tasks themselves. The "
             "last two rows are the floors on the same items: random choice, and the best constant answer.",
             "probe: the held-out facts as statements in a row of the entity's other facts, in the format the "
             "model's objectives train (MLM: the value as a sentinel's target); random "
             f"{100 * (summary['probe_baseline'] or 0):.1f}%. lr: the pretraining peak learning rate.",
             "speed-up: tokens the from-scratch pair needed to reach the adapted model's final validation loss, "
             "divided by the tokens of adaptation (above 1: adapting was cheaper than starting over)."]
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines] + [""] + notes)


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
             format_table(summary), "```", ""]
    if summary["config"].get("lr_sweep"):
        lines += ["The learning rates come from this sweep (`minillm study --tune`):", "", "```",
                  format_sweep(summary["config"]["lr_sweep"]), "```", ""]
    lines += ["## The paper's conclusions, checked", ""]
    done = [r for r in summary["rows"] if r.get("finetuned")]
    if done and summary["baselines"]:
        top = max(done, key=lambda r: r["finetuned"]["mean"])
        gain = 100 * (top["finetuned"]["mean"] - summary["baselines"]["heldout_type"]["constant"])
        lines.append(f"Best accuracy on the held-out task types after multitask finetuning: {top['row']} "
                     f"{_fmt(top['finetuned'])}%, {gain:+.1f} points over the best constant answer.\n")
    for claim, verdict, why in conclusions(summary):
        lines.append(f"- {verdict}: {claim} — {why}")
    if warn := _probe_warnings(summary):
        lines += ["", "## Caveats", ""] + [f"- {w}" for w in warn]
    return "\n".join(lines) + "\n"


def write_outputs(summary, out):
    write_json_atomic(os.path.join(out, "results.json"), {k: v for k, v in summary.items() if k != "units"})
    cols = [(k, s) for k in ("probe", "zero_shot", "zero_shot_relations", "finetuned", "finetuned_relations",
                             "finetuned_train") for s in ("mean", "std")] + [("speedup", "mean")]
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "parameters", "flops_per_token"] + [f"{k}_{s}" for k, s in cols] + ["n_seeds"])
        for r in summary["rows"]:
            stats = [r[k][s] if r.get(k) else "" for k, s in cols]
            w.writerow([r["row"], r["parameters"], r["flops_per_token"], *stats,
                        (r.get("zero_shot") or r.get("finetuned") or {}).get("n", "")])
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(report(summary))
    _plots(summary, out)


def _plots(summary, out):
    try:
        from matplotlib.figure import Figure   # no pyplot: no GUI backend, no global state
    except ImportError:
        return
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 2)
    for name, r in sorted(summary["units"].items()):
        if r["stage"] in ("pretrain", "adapt") and r["curve"] and r["seed"] == 0:
            axes[0].plot(*zip(*r["curve"]), label=f"{r['label']}{' (adapted)' if r['stage'] == 'adapt' else ''}")
    axes[0].set(xlabel="tokens seen", ylabel="validation loss (each in its own objective)", title="pretraining and adaptation, seed 0")
    rows = summary["rows"]
    x = np.arange(len(rows))
    for off, key, lab in ((-0.2, "zero_shot", "after pretraining"), (0.2, "finetuned", "after finetuning")):
        axes[1].bar(x + off, [100 * r[key]["mean"] if r.get(key) else 0 for r in rows], 0.4, label=lab,
                    yerr=[100 * r[key]["std"] if r.get(key) else 0 for r in rows])
    if summary["baselines"]:
        axes[1].axhline(100 * summary["baselines"]["heldout_type"]["constant"], color="k", ls="--",
                        label="best constant answer")
    axes[1].set_xticks(x, [r["row"].split(":")[0] if r["key"] in ADAPTATIONS else r["row"] for r in rows],
                       rotation=45, fontsize=7)
    axes[1].set(ylabel="accuracy (%)", title="held-out task types, zero-shot")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "results.png"), dpi=120)
