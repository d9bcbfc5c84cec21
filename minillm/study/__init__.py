"""Layer 4, the study: the architecture x objective grid of Wang et al. 2022, at toy scale.
It may import engine, model, data and train; nothing here imports the command line.

The study pretrains the six pairs the paper trained (CD:FLM, CD:MLM, ND:PLM, ND:MLM,
ED:PLM, ED:MLM) on the built-in world, with budgets matched on tokens seen; ED has L
layers per stack against the decoders' L, about the same compute per token (the paper's
comparison). Each model is evaluated zero-shot on the held-out tasks by rank
classification, finetuned on the mixture of training tasks (loss on the answer only,
constant learning rate, dropout), and evaluated again. Two adaptations reuse weights with
a new mask and objective: LM-A (ND:MLM -> causal FLM) and NC-A (CD:FLM -> prefix MLM),
each compared with the from-scratch model of the same pair (the speed-up: tokens the
from-scratch run needed to reach the adapted model's final validation loss / tokens of
adaptation).

Every accuracy stands beside a *statement probe* (does the model know the held-out facts
at all? rank-classify the value after "the pet of X is a", and for MLM-trained models also
in their own format: the value as a sentinel's target), so that "never learned the facts"
is not mistaken for "did not transfer".

    plan.py      StudyConfig, PRESETS, the adaptations, the units and where they live
    run.py       training and evaluating a unit; the runners (this process, local processes, or a
                 Dask cluster), each unit claimed first so that no two runners run it twice
    results.py   the table, the paper's conclusions checked, results.json/.csv/.md/.png
    evaluate.py  rank classification (zero-shot evaluation)
    rank.py      why decoder-only? ranks of attention matrices

`minillm study` (in minillm/cli/) runs it: in local processes (`--jobs`), on a Dask cluster
(`--dask ADDRESS`), or one unit per command (`--list-units`, `--unit NAME`) for any scheduler.
"""
from . import evaluate, rank
from .plan import PRESETS, StudyConfig, units
from .results import collect, conclusions, format_table, report, tokens_to_reach
from .run import make_trainer, run_study, run_unit

__all__ = ["StudyConfig", "PRESETS", "units", "make_trainer", "run_unit", "run_study", "collect", "format_table",
           "report", "tokens_to_reach", "conclusions"]
