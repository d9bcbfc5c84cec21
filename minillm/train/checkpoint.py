"""Checkpoints: one ``.npz`` file that holds everything needed to resume a run exactly.

Inside the file (a zip of ``.npy`` arrays, readable with ``np.load(path, allow_pickle=False)``):

    model/<parameter name>        the weights
    optim/<buffer>/<index>        optimiser state (e.g. optim/exp_avg/3), if saved
    __meta__                      UTF-8 JSON as a uint8 array: format and version, step,
                                  tokens seen, the full run config, the model config and
                                  arch, the tokenizer, RNG states, the optimiser's settings,
                                  free-form ``extra``, and the shape, dtype and CRC-32 of
                                  every array above

**Atomic save.** The file is written to a temporary file in the same directory, flushed
and fsync'ed, then renamed over the target with ``os.replace`` (atomic on POSIX and
Windows), and the directory is fsync'ed. A crash at any moment leaves either the old
checkpoint or the new one, never a mixture; a stray ``.*.tmp`` file is the only trace.

**Careful load.** ``load_checkpoint`` reads every array eagerly, checks the format, the
version and each array's CRC-32, and raises ``CheckpointError`` (a ``ValueError``) naming
the file and what is wrong: not a checkpoint, truncated, corrupt, from another version.
``Checkpoint.restore(model, optimizer)`` checks that the checkpoint was written for this
model (arch, config, parameter names and shapes) and optimiser before it changes anything.
No pickle anywhere: all metadata is JSON.
"""
import contextlib
import dataclasses
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint",
           "atomic_write", "write_json_atomic"]

FORMAT = "minillm-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, or written for something else."""


# ---- atomic files ----------------------------------------------------------------------------

def atomic_write(path, write):
    """Call ``write(binary_file)`` on a temporary file next to ``path``, make it durable, then
    rename it over ``path``. On any failure the temporary file is removed and ``path`` is
    untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        mask = os.umask(0)  # reading the umask means setting it; put it back at once
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json_atomic(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


# ---- save ------------------------------------------------------------------------------------

def _model_config(model):
    cfg = getattr(model, "config", None)
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None


def save_checkpoint(path, model, optimizer=None, *, step=0, tokens_seen=0, config=None,
                    tokenizer=None, rng_states=None, extra=None):
    """Write a checkpoint atomically. ``config`` is the run's config (a JSON-able dict),
    ``tokenizer`` a minillm tokenizer (stored as its JSON), ``rng_states`` a dict name ->
    ``generator.bit_generator.state`` (a JSON-able dict; ``Checkpoint.restore`` puts it back
    into the Generator in place, so every holder of it, e.g. all Dropout layers, sees it),
    ``extra`` any JSON-able dict."""
    arrays = {f"model/{name}": np.ascontiguousarray(a) for name, a in model.state_dict().items()}
    optim_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        for buf, arrs in sd["buffers"].items():
            for i, a in enumerate(arrs):
                arrays[f"optim/{buf}/{i}"] = np.ascontiguousarray(a)
        optim_meta = {**sd, "buffers": {b: len(a) for b, a in sd["buffers"].items()}}
    meta = {
        "format": FORMAT, "version": VERSION,
        "step": int(step), "tokens_seen": int(tokens_seen),
        "arch": getattr(model, "arch", None), "model_config": _model_config(model),
        "config": config, "tokenizer": None if tokenizer is None else tokenizer.to_dict(),
        "rng": rng_states or {}, "optimizer": optim_meta, "extra": extra or {},
        "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": zlib.crc32(a.data)}
                   for k, a in arrays.items()},
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


# ---- load --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read and verified from disk. ``model_state`` maps parameter names to
    arrays; ``optimizer_state`` is an optimiser ``state_dict`` or None."""

    path: str
    meta: dict
    model_state: dict
    optimizer_state: dict = None

    step = property(lambda self: self.meta["step"])
    tokens_seen = property(lambda self: self.meta["tokens_seen"])
    config = property(lambda self: self.meta["config"])
    arch = property(lambda self: self.meta["arch"])
    model_config = property(lambda self: self.meta["model_config"])

    def error(self, what):
        return CheckpointError(f"checkpoint {self.path}: {what}")

    def tokenizer(self):
        from ..data.tokenizer import tokenizer_from_dict
        d = self.meta.get("tokenizer")
        if d is None:
            raise self.error("holds no tokenizer")
        return tokenizer_from_dict(d, source=self.path)

    def build_model(self, seed=0):
        """A model of the checkpoint's arch and config, with its weights."""
        from ..model.models import ModelConfig, build_model
        if self.model_config is None or self.arch is None:
            raise self.error("holds no model config")
        model = build_model(self.arch, ModelConfig(**self.model_config), seed=seed)
        self.restore(model)
        return model

    def restore(self, model, optimizer=None, rngs=None):
        """Load weights into ``model`` (and state into ``optimizer``, and RNG states into the
        Generators of the dict ``rngs``). Everything is checked first: on any mismatch a
        CheckpointError is raised and nothing has changed."""
        if self.arch is not None and getattr(model, "arch", None) != self.arch:
            raise self.error(f"was written for arch {self.arch!r}, the model is {getattr(model, 'arch', None)!r}")
        mine = _model_config(model)
        if self.model_config is not None and mine is not None and mine != self.model_config:
            diff = ", ".join(f"{k}={self.model_config.get(k)!r} (model has {mine.get(k)!r})"
                             for k in sorted(set(mine) | set(self.model_config))
                             if mine.get(k) != self.model_config.get(k))
            raise self.error(f"was written for another model config: {diff}")
        try:
            model.check_state_dict(self.model_state)
        except (KeyError, ValueError) as e:
            raise self.error(f"weights do not fit the model: {e.args[0]}") from None
        if optimizer is not None:
            if self.optimizer_state is None:
                raise self.error("holds no optimiser state")
            try:
                optimizer.check_state_dict(self.optimizer_state)
            except ValueError as e:
                raise self.error(f"optimiser state does not fit: {e}") from None
        for name in (rngs or {}):
            if name not in self.meta["rng"]:
                raise self.error(f"holds no state for RNG {name!r}")
        model.load_state_dict(self.model_state)
        if optimizer is not None:
            optimizer.load_state_dict(self.optimizer_state)
        for name, gen in (rngs or {}).items():
            gen.bit_generator.state = self.meta["rng"][name]
        return self


def load_checkpoint(path):
    """Read and verify a checkpoint; raises CheckpointError naming the file and the problem."""
    path = os.fspath(path)
    fail = lambda what: CheckpointError(f"checkpoint {path}: {what}")  # noqa: E731
    if not os.path.exists(path):
        raise fail("no such file")
    npy = False
    try:
        with open(path, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        with np.load(path, allow_pickle=False) as z:   # (a .npy array is no context manager)
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error, AttributeError,
            NotImplementedError, UnicodeDecodeError, IndexError, TypeError) as e:  # what damaged zips raise
        what = "a single .npy array, not an .npz" if npy else f"{type(e).__name__}: {e}"
        raise fail(f"unreadable, truncated or corrupt ({what})") from None
    if "__meta__" not in arrays:
        raise fail("not a minillm checkpoint (no __meta__ entry)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"corrupt metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise fail(f"not a minillm checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise fail(f"format version {meta.get('version')!r}, this minillm reads version {VERSION}")
    listed = meta.get("arrays", {})
    if set(listed) != set(arrays):
        raise fail(f"arrays {sorted(set(listed) ^ set(arrays))} missing or unexpected")
    for key, info in listed.items():
        a, crc = arrays[key], zlib.crc32(np.ascontiguousarray(arrays[key]).data)
        if [list(a.shape), a.dtype.str, crc] != [info["shape"], info["dtype"], info["crc32"]]:
            raise fail(f"array {key} is corrupt (shape, dtype or checksum differs)")
    model_state = {k[len("model/"):]: a for k, a in arrays.items() if k.startswith("model/")}
    om = meta.get("optimizer")  # the optimiser's state dict, its buffers replaced by their lengths
    optimizer_state = None if om is None else {**om, "buffers": {
        b: [arrays[f"optim/{b}/{i}"] for i in range(n)] for b, n in om["buffers"].items()}}
    return Checkpoint(path, meta, model_state, optimizer_state)
