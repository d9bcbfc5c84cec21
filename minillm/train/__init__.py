"""Layer 3, training: optimisers, checkpoints, and the training loop.

    optim.py       SGD, AdamW, gradient clipping, learning-rate schedules
    checkpoint.py  atomic, verified checkpoints (no pickle)
    trainer.py     TrainConfig and its presets, the training loop, progress

May import: NumPy and `minillm.engine`, `minillm.model`, `minillm.data`.
"""
