"""Layer 2, the data: tokens, the three objectives, batches, and the built-in world.

    tokenizer.py   byte- and word-level tokenizers with T5 sentinels
    objectives.py  FLM, PLM and T5 span corruption on one sequence
    batches.py     what each architecture is fed for each objective, and packing
    world.py       the synthetic world of the study: facts, statements, tasks, probes

May import: NumPy, and within this package only. (Nothing here needs the engine.)
"""
