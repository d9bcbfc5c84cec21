"""The plan of a study: its settings, its presets, the two adaptations, and its units.

A study is split into units (stage x pair x seed), each one directory `OUT/units/NAME`
(the unit's name with `/` as `_`) holding its checkpoint, log and `result.json`; a unit is
done when its `result.json` exists. `units(cfg)` lists them, each after the unit whose
weights it starts from.
"""
import dataclasses
import os

from ..data.batches import OBJECTIVES, PAPER_PAIRS
from ..train.trainer import PRESETS as TRAIN_PRESETS


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


def _preset(size, **budgets):
    """A study on trainer preset `size` (model sizes, and the world of that name) that
    pretrains every objective at that preset's learning rate."""
    return StudyConfig(size, size, lr=dict.fromkeys(OBJECTIVES, TRAIN_PRESETS[size]["lr"]), **budgets)


PRESETS = {
    "smoke": _preset("smoke", pretrain_tokens=6_000, adapt_tokens=3_000, finetune_tokens=4_000, finetune_batch=16,
                     eval_every=4, eval_examples=4),
    "default": _preset("default", pretrain_tokens=1_000_000, adapt_tokens=500_000, finetune_tokens=200_000,
                       eval_every=40),
    # the default model and world with six times the budget: enough for MLM to learn the facts?
    "large": _preset("default", pretrain_tokens=6_000_000, adapt_tokens=3_000_000, finetune_tokens=400_000,
                     eval_every=100),
}

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

    @property
    def objectives(self):
        """Every objective the unit's weights are trained with (an adaptation's: two)."""
        name = self.name.split("/")[1]
        return {ADAPTATIONS[name][0][1], self.objective} if name in ADAPTATIONS else {self.objective}


def units(cfg):
    """Every unit of a study, each after the unit it starts from."""
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
