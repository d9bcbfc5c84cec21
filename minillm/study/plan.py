"""The plan of a study: its settings, its presets, the two adaptations, and its units.

A study is split into units (stage x pair x seed; the stages: pretrain, adapt, finetune, and
tune for the learning-rate sweep), each one directory `OUT/units/NAME`
(the unit's name with `/` as `_`) holding its checkpoint, log and `result.json`; a unit is
done when its `result.json` exists. `units(cfg)` lists them, each after the unit whose
weights it starts from.
"""
import dataclasses
import os

from ..data.batches import PAPER_PAIRS
from ..train.trainer import PRESETS as TRAIN_PRESETS


@dataclasses.dataclass
class StudyConfig:
    """Everything that defines a study. Model sizes come from the trainer preset of the same name."""

    preset: str = "default"             # model sizes: the trainer preset of this name
    world: str = "default"              # the built-in world's preset
    seeds: int = 1
    world_seed: int = 0
    pretrain_tokens: int = 0
    lr: dict = None                     # "arch-objective" -> peak learning rate of pretraining (adaptation: the new pair's)
    adapt_tokens: int = 0
    finetune_tokens: int = 0
    finetune_lr: float = 5e-4
    finetune_dropout: float = 0.1
    finetune_batch: int = 64
    eval_every: int = 50                # steps between validation losses (the adaptation curves)
    eval_examples: int = 48             # examples per task template scored in evaluation
    lr_sweep: dict = None               # the recorded --tune sweep the lr came from: pair -> {rate: [val loss, probe]}

    def to_dict(self):
        return dataclasses.asdict(self)


PAIR_KEYS = tuple(f"{a}-{o}" for a, o in PAPER_PAIRS)


def _preset(size, lr=None, **budgets):
    """A study on trainer preset `size` (model sizes, and the world of that name) that pretrains
    each pair at its rate in `lr` (default: the trainer preset's rate for all)."""
    return StudyConfig(size, size, lr=lr or dict.fromkeys(PAIR_KEYS, TRAIN_PRESETS[size]["lr"]), **budgets)


# `minillm study --tune` on the default preset (2026-12-04, seed 0): pair -> {rate: [val loss, probe]}
# after 625k tokens, and the rate it chose (see results.chosen_rates)
SWEEP = {"cd-flm": {"0.001": [0.675, 1.0],
             "0.003": [0.556, 1.0],
             "0.01": [0.681, 1.0]},
         "cd-mlm": {"0.001": [1.798, 0.229],
             "0.003": [1.628, 0.188],
             "0.01": [2.179, 0.146]},
         "ed-mlm": {"0.001": [1.659, 0.75],
             "0.003": [1.984, 0.125],
             "0.01": [2.354, 0.25]},
         "ed-plm": {"0.001": [0.795, 1.0],
             "0.003": [0.765, 0.229],
             "0.01": [1.643, 0.271]},
         "nd-mlm": {"0.001": [1.812, 0.188],
             "0.003": [1.673, 0.188],
             "0.01": [2.382, 0.042]},
         "nd-plm": {"0.001": [0.68, 1.0],
             "0.003": [0.509, 1.0],
             "0.01": [0.857, 0.854]}}
TUNED_LR = {"cd-flm": 0.003, "cd-mlm": 0.003, "ed-mlm": 0.001, "ed-plm": 0.001, "nd-mlm": 0.003, "nd-plm": 0.003}


PRESETS = {
    "smoke": _preset("smoke", pretrain_tokens=6_000, adapt_tokens=3_000, finetune_tokens=4_000, finetune_batch=16,
                     eval_every=4, eval_examples=4),
    "default": _preset("default", pretrain_tokens=2_500_000, adapt_tokens=1_000_000, finetune_tokens=400_000,
                       eval_every=50, lr=TUNED_LR, lr_sweep=SWEEP),
    # the default model and world with more than twice the budget
    "large": _preset("default", pretrain_tokens=6_000_000, adapt_tokens=3_000_000, finetune_tokens=800_000,
                     eval_every=100),
}

TUNE_RATES = (1e-3, 3e-3, 1e-2)   # `minillm study --tune`: each pair pretrained at each rate ...
TUNE_SHARE = 4                     # ... for 1/TUNE_SHARE of the pretraining budget, seed 0

ADAPTATIONS = {  # name: (source pair, new arch, new objective, from-scratch pair it is compared with)
    "lm-a": (("nd", "mlm"), "cd", "flm", ("cd", "flm")),
    "nc-a": (("cd", "flm"), "nd", "mlm", ("nd", "mlm")),
}


@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of work: a stage of one pair (or adaptation) for one seed."""

    name: str             # e.g. "pretrain/cd-flm/s0"
    stage: str            # pretrain | adapt | finetune
    arch: str
    objective: str        # the objective it trains with (finetune: the one its weights were trained with last)
    seed: int
    source: str = None    # the unit whose weights it starts from
    label: str = ""       # the row of the table
    lr: float = None      # a tune unit's learning rate

    @property
    def objectives(self):
        """Every objective the unit's weights are trained with (an adaptation's: two)."""
        name = self.name.split("/")[1]
        return {ADAPTATIONS[name][0][1], self.objective} if name in ADAPTATIONS else {self.objective}


def units(cfg, tune=False):
    """Every unit of a study, each after the unit it starts from; or (`tune`) of its learning-rate sweep."""
    if tune:
        return [Unit(f"tune/{a}-{o}-lr{r:g}/s0", "tune", a, o, 0, label=label((a, o)), lr=r)
                for a, o in PAPER_PAIRS for r in TUNE_RATES]
    out = []
    for s in range(cfg.seeds):
        pre = {p: Unit(f"pretrain/{p[0]}-{p[1]}/s{s}", "pretrain", p[0], p[1], s, label=label(p)) for p in PAPER_PAIRS}
        first = [*pre.values(), *(Unit(f"adapt/{name}/s{s}", "adapt", arch, obj, s, pre[src].name, label=name.upper())
                                  for name, (src, arch, obj, _) in ADAPTATIONS.items())]
        out += first + [dataclasses.replace(u, name=u.name.replace(u.stage, "finetune", 1), stage="finetune",
                                            source=u.name) for u in first]   # each finetunes a first stage
    return out


def label(pair):
    return f"{pair[0].upper()}:{pair[1].upper()}"


def unit_dir(out, name):
    """The directory of unit `name` (`/` replaced by `_`) in study directory `out`."""
    return os.path.join(out, "units", name.replace("/", "_"))


def result_path(out, name):
    return os.path.join(unit_dir(out, name), "result.json")


def is_done(out, name):
    return os.path.exists(result_path(out, name))
