"""Training: a config, its presets, and one loop over the batches of the run's data
(``minillm.data.corpus``: ``load_corpus``, ``BatchStream``, re-exported here).

    cfg = TrainConfig(arch="cd", objective="flm", preset="smoke")
    corpus = load_corpus(cfg.resolved())               # tokenizer + train/val documents
    trainer = Trainer(cfg, corpus, out_dir="runs/x")   # builds the model and the optimiser
    trainer.fit()                                      # trains until cfg.tokens are seen

**Budgets are tokens seen** (non-pad tokens fed to the model, as the study matches them),
not steps and not tokens that carry a loss. The learning-rate schedule is a function of
tokens seen too, so a budget means the same thing for every arch:objective pair.

**Reproducible to the bit.** The batch of step ``s`` depends only on ``(seed, s)`` (see
``BatchStream``); the model's initial weights only on ``seed``; dropout draws from the
model's own Generator, whose state is saved. So the same config gives the same losses, and
resuming from a checkpoint gives exactly the weights of a run that never stopped.

**Never loses work.** ``out_dir`` holds ``checkpoint.npz`` (written atomically every
``checkpoint_every`` steps, at the end, and on Ctrl-C), ``config.json`` (the resolved
config) and ``log.jsonl`` (one JSON object per logged step and per evaluation). A
non-finite loss or gradient stops training with ``NonFiniteLoss`` before the optimiser
touches the weights, and leaves the last good checkpoint in place.
"""
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time

from ..data.batches import IGNORE_INDEX, check_pair
from ..data.corpus import BatchStream, Corpus, load_corpus, validation_batches  # also re-exported
from ..engine import functional as F, kernels
from ..engine.tensor import no_grad
from ..model.models import ModelConfig, build_model
from ..model.nn import eval_mode
from . import optim
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint, write_json_atomic

__all__ = ["TrainConfig", "PRESETS", "Trainer", "NonFiniteLoss", "Interrupted", "evaluate_loss",
           "Corpus", "load_corpus", "BatchStream", "validation_batches"]


# ---- configuration ---------------------------------------------------------------------------

def _setting(default, help):
    """A TrainConfig field whose ``help`` is its ``--flag``'s help text in the command line."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run. ``preset`` fills any field left as None."""

    arch: str = "cd"
    objective: str = "flm"
    data: str = _setting("world", "'world' (the built-in synthetic world, default) or a UTF-8 text file")
    preset: str = _setting("default", "smoke | default | large: model size, token budget and world size")
    seed: int = _setting(0, "seed of the model's initial weights, the data order and dropout")
    world_seed: int = _setting(0, "seed of the built-in world's facts")
    world_preset: str = None        # size of the built-in world (default: the same as preset)
    # model (vocab_size comes from the tokenizer)
    d_model: int = None
    n_heads: int = None
    n_layers: int = _setting(None, "layers (per stack for ed)")
    d_ff: int = None
    max_len: int = _setting(None, "positions per row (each of source and target for ed)")
    dropout: float = 0.0
    # optimisation
    tokens: int = _setting(None, "token budget: tokens seen (fed to the model), not tokens with a loss")
    batch_size: int = _setting(None, "rows per micro-batch")
    grad_accum: int = _setting(1, "micro-batches per optimiser step")
    lr: float = None
    schedule: str = _setting("cosine", "learning-rate schedule after the linear warm-up")
    warmup: float = _setting(0.05, "warm-up as a fraction of the token budget")
    min_lr: float = _setting(0.1, "final learning rate of the cosine schedule, as a fraction of --lr")
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = _setting(1.0, "clip the global gradient norm to this (0 = off)")
    # bookkeeping
    log_every: int = 10             # steps between log records
    eval_every: int = _setting(100, "steps between evaluations (0 = only at the end)")
    eval_batches: int = 4
    checkpoint_every: int = _setting(200, "steps between checkpoints (there is always one at the end)")

    def resolved(self):
        """A copy with the preset's values filled in and the run's settings checked (the model's
        sizes are checked by ModelConfig, the schedule's kind by Schedule, when the trainer builds them)."""
        preset = PRESETS.get(self.preset)
        if preset is None:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        cfg = dataclasses.replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})
        cfg.arch, cfg.objective = check_pair(cfg.arch, cfg.objective)
        # max_len too: the data reads it before ModelConfig does
        for name in ("max_len", "tokens", "batch_size", "grad_accum", "log_every", "eval_batches",
                     "checkpoint_every"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)!r}")
        if cfg.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {cfg.eval_every!r}")
        if not (cfg.lr > 0 and 0 <= cfg.warmup < 1 and 0 <= cfg.min_lr <= 1 and cfg.grad_clip >= 0):
            raise ValueError("need lr > 0, 0 <= warmup < 1, 0 <= min_lr <= 1 and grad_clip >= 0")
        return cfg

    @classmethod
    def from_dict(cls, d, source="config"):
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}")
        return cls(**d)

    def model_config(self, tokenizer):
        return ModelConfig(vocab_size=tokenizer.vocab_size, d_model=self.d_model, n_heads=self.n_heads,
                           n_layers=self.n_layers, d_ff=self.d_ff, max_len=self.max_len,
                           dropout=self.dropout, pad_id=tokenizer.pad_id)


# The default preset is the model and budget (800 steps x 32 rows x 64 positions) with
# which a small prototype learned the facts of the default world.
PRESETS = {
    "smoke": dict(d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=32, batch_size=8,
                  tokens=8 * 32 * 12, lr=3e-3),
    "default": dict(d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=64, batch_size=32,
                    tokens=800 * 32 * 64, lr=3e-3),
    "large": dict(d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=64, batch_size=32,
                  tokens=3200 * 32 * 64, lr=3e-3),
}


# ---- evaluation ----------------------------------------------------------------------------------

def evaluate_loss(model, batches):
    """Token-weighted mean loss, perplexity and next-token accuracy over ``batches`` (eval
    mode, no graph). Returns a dict with ``val_loss``, ``val_ppl``, ``val_acc``, ``val_tokens``."""
    total, correct, n = 0.0, 0, 0
    with eval_mode(model), no_grad():
        for b in batches:
            logits = model(*b.inputs)
            loss = F.cross_entropy(logits, b.targets, ignore_index=IGNORE_INDEX).item()
            keep = b.targets != IGNORE_INDEX
            total += loss * keep.sum()
            correct += int((logits.data.argmax(-1) == b.targets)[keep].sum())
            n += int(keep.sum())
    mean = float(total / max(n, 1))
    return {"val_loss": mean, "val_ppl": math.exp(min(mean, 700.0)), "val_acc": correct / max(n, 1),
            "val_tokens": n}


# ---- progress ------------------------------------------------------------------------------------

class Progress:
    """A tqdm bar over tokens seen if tqdm is installed (``minillm[extras]``), else a plain
    line every ``every`` seconds with tokens/s, loss and ETA."""

    def __init__(self, total, initial=0, enabled=True, every=10.0, stream=None):
        self.total, self.done, self.initial, self.enabled, self.every = total, initial, initial, enabled, every
        self.stream, self.bar, self.start, self.last = stream or sys.stderr, None, time.perf_counter(), 0.0
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="tok", unit_scale=True, dynamic_ncols=True,
                            file=self.stream, smoothing=0.1) if enabled else None
        except ImportError:  # the plain lines below
            pass

    def update(self, tokens, step, loss):
        self.done += tokens
        if self.bar is not None:
            self.bar.update(tokens)
            self.bar.set_postfix_str(f"step {step} loss {loss:.4f}", refresh=False)
        elif self.enabled and (time.perf_counter() - self.last >= self.every or self.done >= self.total):
            self.last = time.perf_counter()
            rate = (self.done - self.initial) / max(self.last - self.start, 1e-9)
            print(f"step {step} | {self.done:,}/{self.total:,} tokens | loss {loss:.4f} | {rate:,.0f} tok/s | "
                  f"ETA {(self.total - self.done) / max(rate, 1e-9) / 60:.1f} min", file=self.stream, flush=True)

    def write(self, text):
        if self.enabled:
            (print if self.bar is None else self.bar.write)(text, file=self.stream)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---- the trainer ---------------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    """Training stopped because the loss or the gradient norm was NaN or infinite."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C (SIGINT) after saving a checkpoint."""


class Trainer:
    """Owns the model, the optimiser, the schedule, the batch stream and the run directory.

    ``Trainer(cfg, corpus, out_dir)`` builds a fresh model from ``cfg.seed``;
    ``Trainer.resume(out_dir, corpus)`` rebuilds one from ``out_dir/checkpoint.npz``.
    """

    def __init__(self, cfg, corpus, out_dir=None, progress=True, model=None):
        self.cfg = cfg = cfg.resolved()
        self.corpus, self.out_dir, self.show_progress = corpus, out_dir, progress
        self.model = model if model is not None else build_model(
            cfg.arch, cfg.model_config(corpus.tokenizer), seed=cfg.seed)
        self.opt = optim.AdamW(self.model, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                               weight_decay=cfg.weight_decay)
        self.schedule = optim.Schedule(cfg.schedule, cfg.lr, warmup=int(cfg.warmup * cfg.tokens),
                                       total=cfg.tokens, min_lr=cfg.min_lr * cfg.lr)
        self.stream = BatchStream(cfg.arch, cfg.objective, corpus, cfg.batch_size, cfg.max_len, cfg.seed)
        self.val_batches = validation_batches(cfg, corpus)
        self.step, self.tokens_seen = 0, 0
        self.last_checkpoint_step = None
        self.eval_extra = None   # model -> dict of more figures for each evaluation record (the study's probe)

    # ---- run directory -------------------------------------------------------------------
    def path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    def config_dict(self):
        return {**dataclasses.asdict(self.cfg), "model": dataclasses.asdict(self.model.config),
                "corpus": self.corpus.name}

    def save(self):
        """Write the checkpoint (atomically) and the resolved config beside it."""
        if self.out_dir is None:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        save_checkpoint(self.path("checkpoint.npz"), self.model, self.opt, step=self.step,
                        tokens_seen=self.tokens_seen, config=dataclasses.asdict(self.cfg),
                        tokenizer=self.corpus.tokenizer,
                        rng_states={"dropout": self.model.dropout_rng.bit_generator.state})
        write_json_atomic(self.path("config.json"), self.config_dict())
        self.last_checkpoint_step = self.step

    # Settings a resumed run may change: they alter neither the model nor the data order.
    RESUMABLE = ("tokens", "log_every", "eval_every", "eval_batches", "checkpoint_every")

    @classmethod
    def resume(cls, out_dir, corpus=None, progress=True, **overrides):
        """Continue the run in ``out_dir`` from its checkpoint. ``overrides`` may change the
        fields in ``RESUMABLE`` (e.g. ``tokens`` to extend the budget, which also stretches
        the learning-rate schedule from here on), nothing else (an override equal to the
        checkpoint's value changes nothing and is accepted)."""
        ck = load_checkpoint(os.path.join(out_dir, "checkpoint.npz"))
        bad = [f"{k} (the checkpoint has {ck.config.get(k)!r})" for k in sorted(overrides)
               if k not in cls.RESUMABLE and overrides[k] != ck.config.get(k)]
        if bad:
            raise ValueError(f"cannot change {', '.join(bad)} when resuming, only {list(cls.RESUMABLE)}; "
                             "start a new run with --out")
        cfg = TrainConfig.from_dict({**ck.config, **overrides}, source=ck.path)
        corpus = load_corpus(cfg.resolved()) if corpus is None else corpus
        if corpus.tokenizer.to_dict() != ck.meta.get("tokenizer"):
            raise ck.error("was trained with another tokenizer than this data gives")
        trainer = cls(cfg, corpus, out_dir, progress)
        ck.restore(trainer.model, trainer.opt, rngs={"dropout": trainer.model.dropout_rng})
        trainer.step, trainer.tokens_seen = ck.step, ck.tokens_seen
        trainer.last_checkpoint_step = ck.step
        log = os.path.join(out_dir, "log.jsonl")
        if os.path.exists(log):  # drop the records written after the checkpoint: they will be redone
            with open(log, encoding="utf-8") as f:
                keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= ck.step]
            atomic_write(log, lambda f: f.write("".join(keep).encode("utf-8")))
        return trainer

    def log(self, record):
        path = self.path("log.jsonl")
        if path is not None:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ---- one step ------------------------------------------------------------------------
    def train_step(self):
        """One optimiser step over ``grad_accum`` micro-batches; returns its log record.

        Each micro-batch's mean loss is weighted by its share of the step's loss tokens, so
        the accumulated gradient is that of one batch holding every micro-batch."""
        cfg = self.cfg
        batches = [self.stream.batch(self.step * cfg.grad_accum + i) for i in range(cfg.grad_accum)]
        n_loss = sum(b.loss_tokens for b in batches)
        self.opt.lr = lr = self.schedule(self.tokens_seen)
        self.model.train()
        self.opt.zero_grad()
        loss_value = 0.0
        for b in batches:
            w = b.loss_tokens / max(n_loss, 1)
            loss = F.cross_entropy(self.model(*b.inputs), b.targets, ignore_index=IGNORE_INDEX)
            (loss * w).backward()
            loss_value += loss.item() * w
        norm = (optim.clip_grad_norm(self.opt.params, cfg.grad_clip) if cfg.grad_clip > 0
                else optim.grad_norm(self.opt.params))
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            where = (f"the last good checkpoint (step {self.last_checkpoint_step}) is kept in "
                     f"{self.path('checkpoint.npz')}" if self.last_checkpoint_step is not None
                     else "no checkpoint was written")
            raise NonFiniteLoss(f"non-finite {'loss' if not math.isfinite(loss_value) else 'gradient norm'} "
                                f"at step {self.step + 1} (loss {loss_value}, grad norm {norm}); "
                                f"weights not updated; {where}")
        self.opt.step()
        self.step += 1
        seen = sum(b.tokens_seen for b in batches)
        self.tokens_seen += seen
        return {"step": self.step, "tokens": self.tokens_seen, "loss": loss_value, "lr": lr,
                "grad_norm": norm, "step_tokens": seen, "loss_tokens": n_loss}

    # ---- the loop --------------------------------------------------------------------------
    def fit(self, max_steps=None):
        """Train until ``cfg.tokens`` tokens have been seen (or ``max_steps`` steps in total).
        Returns the final evaluation record. Raises ``Interrupted`` after Ctrl-C (having saved
        a checkpoint) and ``NonFiniteLoss`` on a NaN/inf loss (keeping the last checkpoint)."""
        cfg = self.cfg
        self._stop = False  # set by the first Ctrl-C (see _catch_sigint)
        progress = Progress(cfg.tokens, self.tokens_seen, self.show_progress)
        restore_sigint = self._catch_sigint()
        try:
            timer, timed_tokens = time.perf_counter(), 0
            while self.tokens_seen < cfg.tokens and (max_steps is None or self.step < max_steps):
                if self._stop:
                    self.save()
                    raise Interrupted(f"interrupted at step {self.step} ({self.tokens_seen:,} tokens seen)")
                record = self.train_step()
                kernels.adapt_threads()   # fewer threads while other processes crowd the cores
                timed_tokens += record["step_tokens"]
                progress.update(record["step_tokens"], self.step, record["loss"])
                if self.step % cfg.log_every == 0 or self.step == 1:
                    elapsed = time.perf_counter() - timer
                    self.log({**record, "tokens_per_s": timed_tokens / elapsed if elapsed > 0 else None})
                    timer, timed_tokens = time.perf_counter(), 0
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate_and_log(progress)
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
            result = self._evaluate_and_log(progress)
            self.save()
            return result
        finally:
            progress.close()
            restore_sigint()

    def _evaluate_and_log(self, progress):
        result = {"step": self.step, "tokens": self.tokens_seen,
                  **evaluate_loss(self.model, self.val_batches), **(self.eval_extra(self.model) if self.eval_extra else {})}
        self.log(result)
        progress.write(f"step {self.step}: val loss {result['val_loss']:.4f}, "
                       f"ppl {result['val_ppl']:.2f}, acc {result['val_acc']:.3f}")
        return result

    def _catch_sigint(self):
        """Make the first Ctrl-C ask the loop to stop at the next step boundary (so the
        checkpoint never holds a half-updated step); a second one interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)
