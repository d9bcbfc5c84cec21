"""``minillm train``, ``generate``, ``eval`` and ``describe``: one run's commands, and the
flags that make a TrainConfig (one ``--flag`` per field, over ``--config FILE`` and the preset)."""
import dataclasses
import json
import os
import sys
import time

from . import UsageError, open_checkpoint, usage_errors
from ..data.batches import ARCHS, OBJECTIVES
from ..model.generate import generate
from ..model.models import ModelConfig, build_model
from ..train.checkpoint import write_json_atomic
from ..train.optim import Schedule
from ..train.trainer import (PRESETS, Interrupted, NonFiniteLoss, Trainer, TrainConfig, evaluate_loss, load_corpus,
                             validation_batches)


# ---- configuration from flags and files -------------------------------------------------------

_CHOICES = {"preset": list(PRESETS), "schedule": list(Schedule.KINDS)}


def add_config_arguments(parser, skip=("arch", "objective")):
    """One ``--flag`` per TrainConfig field (``d_model`` -> ``--d-model``), default None
    (= from --config or the preset), plus ``--config FILE``."""
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flags override it)")
    group = parser.add_argument_group("settings (default: from --config, else the preset)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        metavar = None if f.name in _CHOICES else "FILE" if f.name == "data" else f.name.upper()
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=f.type, metavar=metavar,
                           choices=_CHOICES.get(f.name), help=f.metadata.get("help", f.name.replace("_", " ")))


def _read_config_file(path):
    toml = path.endswith(".toml")
    try:
        if toml:
            import tomllib  # Python 3.11 and later
        with open(path, "rb") as f:
            d = (tomllib if toml else json).load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"config file {path!r} is not valid {'TOML' if toml else 'JSON'}: {e}") from None
    if not isinstance(d, dict):
        raise UsageError(f"config file {path!r} must hold an object of settings")
    # a resolved config.json of another run can be reused as it is
    return {k: v for k, v in d.items() if k not in ("model", "corpus")}


def _flags(args):
    """The TrainConfig fields given as flags: {name: value}."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name, None) is not None}


def config_from_args(args):
    """TrainConfig from (lowest first) defaults, the preset, ``--config`` and the flags;
    resolved and checked (a bad value is a UsageError)."""
    values = {**(_read_config_file(args.config) if getattr(args, "config", None) else {}), **_flags(args)}
    try:
        return TrainConfig.from_dict(values, source=getattr(args, "config", None) or "settings").resolved()
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


# ---- train -------------------------------------------------------------------------------------

RUN_FILES = ("checkpoint.npz", "config.json", "log.jsonl")


def add_train_arguments(p):
    p.add_argument("--arch", choices=ARCHS,
                   help="cd: causal decoder (GPT); nd: prefix (non-causal) decoder; ed: encoder-decoder")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="flm: full language modeling; plm: prefix LM; mlm: T5 span corruption")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/ARCH-OBJECTIVE-PRESET-sSEED)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    mode.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    add_config_arguments(p)


def run_train(args):
    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out DIR (the run to continue)")
        return _resume(args)
    if args.config is None and (args.arch is None or args.objective is None):
        raise UsageError(f"choose --arch ({', '.join(ARCHS)}) and --objective ({', '.join(OBJECTIVES)}), or give --config")
    cfg = config_from_args(args)
    out = args.out or os.path.join("runs", f"{cfg.arch}-{cfg.objective}-{cfg.preset}-s{cfg.seed}")
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if existing and not args.force:
        raise UsageError(f"{out} already holds a run ({', '.join(existing)}); "
                         "pass --resume to continue it or --force to overwrite it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a directory")
    with usage_errors():
        trainer = Trainer(cfg, load_corpus(cfg), out, progress=not args.no_progress)
    for f in existing:  # --force: replace the old run's files, nothing else in the directory
        os.remove(os.path.join(out, f))
    return _fit(trainer, out)


def _resume(args):
    if args.config:
        raise UsageError("--config cannot be used with --resume (the run's config is in its checkpoint)")
    with usage_errors():  # a setting Trainer.RESUMABLE does not list cannot change
        trainer = Trainer.resume(args.out, progress=not args.no_progress, **_flags(args))
    if trainer.tokens_seen >= trainer.cfg.tokens:
        print(f"{args.out}: the run already saw its budget of {trainer.cfg.tokens:,} tokens; "
              "raise it with --tokens to train on", file=sys.stderr)
        return 0
    return _fit(trainer, args.out)


def _fit(trainer, out):
    cfg = trainer.cfg
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "config.json"), trainer.config_dict())
    print(f"{cfg.arch}:{cfg.objective} on {trainer.corpus.name}: {trainer.model.num_parameters():,} parameters, "
          f"budget {cfg.tokens:,} tokens seen, run directory {out}", file=sys.stderr)
    start_tokens, t0 = trainer.tokens_seen, time.perf_counter()
    try:
        result = trainer.fit()
    except Interrupted as e:
        print(f"{e}; checkpoint saved in {out}; continue with: minillm train --out {out} --resume", file=sys.stderr)
        return 130
    except NonFiniteLoss as e:
        print(f"minillm train: error: training stopped: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    rate = (trainer.tokens_seen - start_tokens) / elapsed if elapsed > 0 else 0.0
    print(f"done: step {trainer.step}, {trainer.tokens_seen:,} tokens, val loss {result['val_loss']:.4f} "
          f"(ppl {result['val_ppl']:.2f}, acc {result['val_acc']:.3f}), {rate:,.0f} tokens/s overall; "
          f"checkpoint {os.path.join(out, 'checkpoint.npz')}", file=sys.stderr)
    return 0


# ---- generate ----------------------------------------------------------------------------------

def add_generate_arguments(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.npz or a run directory")
    p.add_argument("--prompt", required=True, help="text to continue (world: words of its vocabulary)")
    p.add_argument("--max-new-tokens", type=int, default=20, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K likeliest tokens")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling")
    p.add_argument("--no-cache", action="store_true", help="full forward passes instead of the key/value cache")


def run_generate(args):
    ck = open_checkpoint(args.checkpoint)
    with usage_errors():
        tok = ck.tokenizer()
        model = ck.build_model()
        prompt = tok.encode(args.prompt)
        if args.max_new_tokens < 0 or args.temperature < 0 or (args.top_k is not None and args.top_k < 1):
            raise ValueError("need --max-new-tokens >= 0, --temperature >= 0 and --top-k >= 1")
        out = generate(model, prompt, args.max_new_tokens, bos_id=tok.bos_id, eos_id=tok.eos_id,
                       temperature=args.temperature, top_k=args.top_k, rng=args.seed,
                       src_eos=(ck.config or {}).get("objective") == "mlm", use_cache=not args.no_cache)
    print(tok.decode(out))
    return 0


# ---- eval --------------------------------------------------------------------------------------

def add_eval_arguments(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.npz or a run directory")
    p.add_argument("--data", metavar="FILE", help="'world' or a text file (default: the run's own data)")
    p.add_argument("--batches", dest="eval_batches", type=int, metavar="N",
                   help="validation batches (default: the run's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_eval(args):
    ck = open_checkpoint(args.checkpoint)
    if not ck.config:
        raise UsageError(f"checkpoint {ck.path} holds no run config")
    with usage_errors():  # --data and --batches (eval_batches) over the run's own config
        cfg = TrainConfig.from_dict({**ck.config, **_flags(args)}, source=ck.path).resolved()
        corpus = load_corpus(cfg)
        if corpus.tokenizer.to_dict() != ck.meta.get("tokenizer"):
            raise ValueError(f"checkpoint {ck.path} was trained with another tokenizer than data "
                             f"{cfg.data!r} gives (its vocabulary differs)")
        model = ck.build_model()
        result = evaluate_loss(model, validation_batches(cfg, corpus))
    result = {"checkpoint": ck.path, "step": ck.step, "tokens_seen": ck.tokens_seen,
              "arch": cfg.arch, "objective": cfg.objective, "data": corpus.name, **result}
    print(json.dumps(result) if args.json else
          f"{ck.path} ({cfg.arch}:{cfg.objective}, step {ck.step}, {ck.tokens_seen:,} tokens seen) on "
          f"{corpus.name}: val loss {result['val_loss']:.4f}, perplexity {result['val_ppl']:.2f}, "
          f"next-token accuracy {result['val_acc']:.3f} over {result['val_tokens']:,} tokens")
    return 0


# ---- describe ----------------------------------------------------------------------------------

def add_describe_arguments(p):
    p.add_argument("--vocab-size", type=int, default=None, metavar="V",
                   help="vocabulary size (default: the data's tokenizer)")
    p.add_argument("--json", action="store_true", help="print one JSON object per arch")
    add_config_arguments(p, skip=("arch", "objective", "seed", "world_seed", "schedule", "warmup", "min_lr",
                                  "beta1", "beta2", "weight_decay", "grad_clip", "log_every", "eval_every",
                                  "eval_batches", "checkpoint_every", "grad_accum"))


def run_describe(args):
    cfg = config_from_args(args)
    with usage_errors():
        if args.vocab_size is not None:
            vocab, source = args.vocab_size, "--vocab-size"
        else:
            vocab, source = load_corpus(cfg).tokenizer.vocab_size, f"tokenizer of {cfg.data!r}"
        mc = ModelConfig(vocab_size=vocab, d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
                         d_ff=cfg.d_ff, max_len=cfg.max_len, dropout=cfg.dropout)
    rows = []
    for arch in ARCHS:
        m = build_model(arch, mc, seed=0)
        rows.append({"arch": arch, "parameters": m.num_parameters(),
                     "forward_flops_per_token": m.flops_per_token(),
                     "train_flops_budget": 3 * m.flops_per_token() * cfg.tokens})
    if args.json:
        print("\n".join(json.dumps(row) for row in rows))
        return 0
    print(f"preset {cfg.preset}: vocab {vocab} ({source}), d_model {mc.d_model}, heads {mc.n_heads}, "
          f"layers {mc.n_layers} (per stack for ed), d_ff {mc.d_ff}, max_len {mc.max_len}; "
          f"budget {cfg.tokens:,} tokens seen")
    print(f"{'arch':<5}{'parameters':>14}{'fwd FLOPs/token':>18}{'train FLOPs (3x fwd) for budget':>34}")
    for r in rows:
        print(f"{r['arch']:<5}{r['parameters']:>14,}{r['forward_flops_per_token']:>18,.0f}"
              f"{r['train_flops_budget']:>34.3e}")
    print("FLOPs count matrix products only (2 per multiply-add) at length max_len; ed counts source "
          "and target tokens of length max_len each. Training costs about 3x the forward pass.")
    return 0
