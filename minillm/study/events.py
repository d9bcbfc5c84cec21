"""How often each pair's batches teach a fact: the *events* of the study's pretraining data.

An event is a loss target that is a fact's value while that fact's entity is visible to
the position predicting it (decoders: the tokens up to it, and the whole prefix for ND;
ED: the encoder input and the decoder tokens up to it). A model can learn a fact only from
its events, so comparing pairs at equal tokens seen means comparing how many events each
objective makes of the same text. `count_events` counts them from the real batch builders;
`minillm study --events` prints the table.
"""
import numpy as np

from ..data.batches import IGNORE_INDEX, PAPER_PAIRS
from ..data.corpus import BatchStream, load_corpus
from ..data.world import World
from ..train.trainer import TrainConfig


def count_events(arch, objective, preset="default", batches=20, seed=0):
    """Figures per token seen for `arch:objective` on the world of `preset`, over `batches` batches:
    loss tokens, events, events per known fact at 1M tokens, and (PLM) the share of rows with a value
    whose first output token is a value: where the tasks' answers go."""
    cfg = TrainConfig(arch=arch, objective=objective, preset=preset, seed=seed).resolved()
    world, corpus = World(preset), load_corpus(cfg)
    enc = lambda words: np.array([int(world.tokenizer.encode(w)[0]) for w in words])  # noqa: E731
    known, values = enc(world.entities), world.value_ids
    stream = BatchStream(arch, objective, corpus, cfg.batch_size, cfg.max_len, seed)
    seen = loss = events = first_value = rows_with_value = 0
    for i in range(batches):
        b = stream.batch(i)
        seen, loss = seen + b.tokens_seen, loss + b.loss_tokens
        for r in range(b.size):
            t = b.targets[r]
            at = np.flatnonzero((t != IGNORE_INDEX) & np.isin(t, values))
            if len(at):
                rows_with_value += 1
                first_value += int(at[0] == np.flatnonzero(t != IGNORE_INDEX)[0])
            for j in at:
                fed = (np.concatenate([b.src[r], b.tgt_in[r, :j + 1]]) if arch == "ed"
                       else b.tokens[r, :max(j + 1, int(b.prefix_len[r]))])
                events += bool(np.isin(fed, known).any())
    n_facts = len(world.entities) * len(world.relations)
    return {"pair": f"{arch}:{objective}", "loss_per_token": loss / seen, "events_per_token": events / seen,
            "events_per_fact_at_1M": 1e6 * events / seen / n_facts,
            "first_output_is_value": first_value / max(rows_with_value, 1)}


def format_events(preset="default", batches=20):
    rows = [count_events(a, o, preset, batches) for a, o in PAPER_PAIRS]
    lines = [f"{'pair':8s} {'loss tok/tok':>12s} {'events/tok':>11s} {'events per fact at 1M':>22s} "
             f"{'first output a value':>21s}"]
    lines += [f"{r['pair']:8s} {r['loss_per_token']:12.2f} {r['events_per_token']:11.3f} "
              f"{r['events_per_fact_at_1M']:22.0f} {100 * r['first_output_is_value']:20.0f}%" for r in rows]
    return "\n".join(lines + [f"(world {preset!r}, {batches} batches per pair; an event: a fact's value is a loss "
                              "target while its entity is visible)"])
