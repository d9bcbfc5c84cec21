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
