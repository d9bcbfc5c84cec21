"""Layer 2, the data: tokens, the three objectives, batches, the built-in world, and a run's corpus.

    tokenizer.py   byte- and word-level tokenizers with T5 sentinels
    objectives.py  FLM, PLM and T5 span corruption on one sequence
    batches.py     what each architecture is fed for each objective, and the one packer
    world.py       the synthetic world of the study: facts, statements, tasks, probes
    corpus.py      a run's documents (the world or a text file) and its stream of batches

May import: NumPy, `minillm.engine` (`rng.as_rng`) and `minillm.model` (`models.ARCHS`).
"""
