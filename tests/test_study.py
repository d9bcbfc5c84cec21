"""The study: units and their dependencies, resumption, adaptation keeping weights, the
speed-up arithmetic, the conclusions logic, and an end-to-end smoke run through the CLI."""
import dataclasses
import json
import os

import numpy as np
import pytest

from minillm import study
from minillm.study import results, run
from minillm.cli import main
from minillm.data.world import World

SMOKE = study.PRESETS["smoke"]


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    assert main(["study", "--preset", "smoke", "--out", out, "--no-progress"]) == 0
    return out


def test_units_come_after_their_sources_and_cover_the_grid():
    cfg = dataclasses.replace(SMOKE, seeds=2)
    names = [u.name for u in study.units(cfg)]
    assert len(names) == len(set(names)) == 2 * (6 + 2 + 6 + 2)
    for i, u in enumerate(study.units(cfg)):
        if u.source:
            assert u.source in names[:i]
    pretrained = {(u.arch, u.objective) for u in study.units(cfg) if u.stage == "pretrain"}
    assert pretrained == {("cd", "flm"), ("cd", "mlm"), ("nd", "plm"), ("nd", "mlm"), ("ed", "plm"), ("ed", "mlm")}


def test_smoke_study_table_has_every_row_and_outputs(smoke_study, capsys):
    summary = json.load(open(os.path.join(smoke_study, "results.json")))
    rows = [r["row"] for r in summary["rows"]]
    assert rows[:6] == ["CD:FLM", "CD:MLM", "ND:PLM", "ND:MLM", "ED:PLM", "ED:MLM"]
    assert rows[6].startswith("LM-A") and rows[7].startswith("NC-A")
    for r in summary["rows"]:
        assert r["zero_shot"] is not None and r["finetuned"] is not None and r["probe"] is not None
        assert 0 <= r["zero_shot"]["mean"] <= 1
    assert {r["key"] for r in summary["rows"] if "speedup" in r} == {"lm-a", "nc-a"}
    text = open(os.path.join(smoke_study, "report.md")).read()
    assert "random choice" in text and "conclusions" in text
    with open(os.path.join(smoke_study, "results.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + 8
    # ED has L+L layers against the decoders' L: about twice the parameters, about the same FLOPs per token
    by = {r["key"]: r for r in summary["rows"]}
    assert 1.5 < by["ed-mlm"]["parameters"] / by["cd-flm"]["parameters"] < 3


def test_rerun_skips_finished_units(smoke_study, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a finished unit was run again")
    monkeypatch.setattr(run, "run_unit", refuse)
    assert main(["study", "--preset", "smoke", "--out", smoke_study, "--no-progress"]) == 0


def test_interrupted_unit_resumes_from_its_checkpoint(smoke_study):
    unit = next(u for u in study.units(SMOKE) if u.name == "pretrain/cd-flm/s0")
    world = World("smoke")
    trainer = study.make_trainer(SMOKE, unit, smoke_study, world)
    assert trainer.tokens_seen >= SMOKE.pretrain_tokens  # picked up the finished checkpoint, not a fresh model


@pytest.mark.parametrize("name", ["adapt/lm-a/s0", "adapt/nc-a/s0", "finetune/nd-mlm/s0"])
def test_adaptation_and_finetuning_start_from_every_source_weight(smoke_study, tmp_path, name):
    unit = next(u for u in study.units(SMOKE) if u.name == name)
    fresh = str(tmp_path)  # a study dir with only the source unit's files
    src_dir = os.path.join("units", unit.source.replace("/", "_"))
    os.makedirs(os.path.join(fresh, src_dir))
    for f in ("checkpoint.npz", "result.json"):
        os.link(os.path.join(smoke_study, src_dir, f), os.path.join(fresh, src_dir, f))
    trainer = study.make_trainer(SMOKE, unit, fresh, World("smoke"))
    source = run.source_state(fresh, unit.source)
    state = trainer.model.state_dict()
    assert state.keys() == source.keys()
    for k in state:
        np.testing.assert_array_equal(state[k], source[k])
    assert trainer.model.arch == unit.arch and trainer.tokens_seen == 0


def test_unit_needs_its_source_finished(tmp_path):
    code = main(["study", "--preset", "smoke", "--out", str(tmp_path), "--unit", "finetune/cd-flm/s0", "--no-progress"])
    assert code == 2


def test_bad_arguments_exit_2(tmp_path, smoke_study):
    assert main(["study", "--preset", "smoke", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert main(["study", "--preset", "smoke", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert main(["study", "--preset", "smoke", "--unit", "pretrain/xx/s0", "--out", str(tmp_path)]) == 2
    assert main(["study", "--preset", "default", "--out", smoke_study, "--list-units"]) == 2  # another config


def test_tokens_to_reach_interpolates():
    curve = [[100, 5.0], [200, 3.0], [300, 2.0]]
    assert study.tokens_to_reach(curve, 4.0) == 150
    assert study.tokens_to_reach(curve, 5.0) == 100
    assert study.tokens_to_reach(curve, 1.0) is None
    base = {"curve": curve, "tokens_seen": 300}
    adapted = {"final_val_loss": 4.0, "tokens_seen": 50}  # from scratch needed 150 tokens for that loss
    assert results._speedup(base, adapted) == (3.0, False)
    better = {"final_val_loss": 1.0, "tokens_seen": 50}   # from scratch never got there: a lower bound
    assert results._speedup(base, better) == (6.0, True)


def _summary(zero_shot, finetuned, nca_speedup=2.0):
    stat = lambda v: {"mean": v, "std": 0.0, "n": 1}  # noqa: E731
    keys = ["cd-flm", "cd-mlm", "nd-plm", "nd-mlm", "ed-plm", "ed-mlm"]
    rows = [{"key": k, "row": k.upper(), "zero_shot": stat(z), "finetuned": stat(f)} for k, z, f in zip(keys, zero_shot, finetuned)]
    rows.append({"key": "nc-a", "row": "NC-A", "zero_shot": stat(0.3), "finetuned": stat(finetuned[3] + 0.01),
                 "speedup": stat(nca_speedup)})
    return {"rows": rows}


def test_conclusions_follow_the_numbers():
    paperlike = study.conclusions(_summary([0.6, 0.3, 0.5, 0.3, 0.4, 0.2], [0.6, 0.5, 0.6, 0.7, 0.5, 0.8]))
    assert [v for _, v, _ in paperlike] == ["REPRODUCED"] * 3
    other = study.conclusions(_summary([0.3, 0.6, 0.5, 0.3, 0.4, 0.2], [0.9, 0.5, 0.6, 0.7, 0.5, 0.8], nca_speedup=0.5))
    assert [v for _, v, _ in other] == ["NOT reproduced"] * 3
    assert "top three here: CD-MLM 60.0" in other[0][2] and "top three here: CD-FLM 90.0" in other[1][2]


def test_a_winner_within_one_standard_deviation_is_a_tie():
    s = _summary([0.50, 0.3, 0.52, 0.3, 0.4, 0.2], [0.6, 0.5, 0.6, 0.7, 0.5, 0.8])
    for r in s["rows"]:
        r["zero_shot"].update(std=0.03, n=3)
    assert study.conclusions(s)[0][1] == "TIED"
    for r in s["rows"]:
        r["zero_shot"].update(std=0.01)
    assert study.conclusions(s)[0][1] == "NOT reproduced"
    equal = _summary([0.6, 0.3, 0.5, 0.3, 0.4, 0.2], [0.6, 0.5, 0.6, 0.7, 0.5, 0.8])
    equal["rows"][-1]["finetuned"]["mean"] = equal["rows"][3]["finetuned"]["mean"]  # NC-A == ND:MLM
    assert study.conclusions(equal)[2][1] == "TIED"


def test_rank_command(smoke_study, capsys):
    assert main(["rank", "--synthetic", "--n", "16", "--d", "2", "--scales", "0.01", "1"]) == 0
    assert "linear (control)" in capsys.readouterr().out
    for pair in ("cd-flm", "ed-mlm"):
        assert main(["rank", os.path.join(smoke_study, "units", f"pretrain_{pair}_s0"), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        masks = {r["mask"] for r in rows}
        assert masks == ({"causal", "prefix", "bidirectional"} if pair == "cd-flm" else {"causal", "bidirectional"})
        assert all(1 <= r["numerical"] <= r["n"] for r in rows)
    assert main(["rank"]) == 2
    assert main(["rank", "x", "--synthetic"]) == 2


# ---- the world's data as each pair sees it (#19) ------------------------------------------------

def test_event_counts_per_pair():
    """Counted from the real batch builders on the default world: FLM makes the most events per token, PLM
    about half, MLM the fewest but not none; PLM splits put a fact's value first on the output side (where a
    question's answer goes) in nearly every row that holds one."""
    from minillm.study.events import count_events
    ev = {f"{a}-{o}": count_events(a, o, "default", batches=4) for a, o in
          [("cd", "flm"), ("nd", "plm"), ("ed", "plm"), ("cd", "mlm"), ("ed", "mlm")]}
    assert ev["cd-flm"]["loss_per_token"] == pytest.approx(1.0, abs=0.02)
    assert ev["cd-flm"]["events_per_token"] > ev["nd-plm"]["events_per_token"] > ev["cd-mlm"]["events_per_token"] > 0
    assert 0.35 < ev["nd-plm"]["events_per_token"] / ev["cd-flm"]["events_per_token"] < 0.7
    for k in ("cd-mlm", "ed-mlm"):   # T5's 15% noise: ~1/5 of the tokens carry a loss
        assert 0.15 < ev[k]["loss_per_token"] < 0.25 and ev[k]["events_per_fact_at_1M"] > 100
    for k in ("nd-plm", "ed-plm"):
        assert ev[k]["first_output_is_value"] > 0.95
    assert ev["cd-flm"]["first_output_is_value"] < 0.2   # FLM's output starts the row: a value only by chance


def test_baselines_come_from_the_evaluated_items():
    from minillm.study import evaluate
    from minillm.data.world import Example
    ex = lambda answer, n=2: Example((5,), tuple((i,) for i in range(n)), answer, 0, "")  # noqa: E731
    items = [ex(1), ex(1), ex(0), ex(1, 4)]
    assert evaluate.constant_baseline(items) == 0.75          # always the second choice
    assert evaluate.random_baseline(items) == pytest.approx((0.5 * 3 + 0.25) / 4)
    world = World("smoke")
    r = run.evaluate_model(_untrained("cd", world), "cd", world, 4, False)
    for g in run.GROUPS:   # recomputed here from the same items: the first 4 of each template
        tasks = [t for t in world.tasks if t.split == g]
        per_task = [np.mean([evaluate.constant_baseline(grp[:4]) for grp in t.by_template()]) for t in tasks]
        assert r[g]["constant"] == pytest.approx(np.mean(per_task)) and r[g]["constant"] >= r[g]["random"]


def _untrained(arch, world):
    from minillm.model.models import ModelConfig, build_model
    cfg = ModelConfig(vocab_size=world.tokenizer.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=32,
                      pad_id=world.tokenizer.pad_id)
    return build_model(arch, cfg, seed=0)


def test_probe_curve_is_kept_and_tune_picks_by_probe_then_loss(smoke_study):
    r = json.load(open(os.path.join(smoke_study, "units", "pretrain_ed-mlm_s0", "result.json")))
    assert len(r["probe_curve"]) >= 2 and r["probe_curve"][-1][0] == r["tokens_seen"]
    assert r["probe_curve"][-1][1] == r["probe"]   # the last point is the final own-format probe
    found = {"ed-plm": {"0.001": [0.80, 1.0], "0.003": [0.76, 0.23], "0.01": [1.6, 0.27]},
             "cd-mlm": {"0.001": [1.80, 0.23], "0.003": [1.63, 0.19], "0.01": [2.2, 0.15]}}
    assert results.chosen_rates(found) == {"ed-plm": 0.001, "cd-mlm": 0.003}
