"""Layer 2, the models: masks, modules, the CD, ND and ED Transformers, and generation.

    masks.py     bidirectional, causal and prefix masks, and padding
    nn.py        Module, Linear, LayerNorm, attention (with its key/value cache), blocks
    models.py    ModelConfig, the decoder-only (CD, ND) and encoder-decoder (ED) models
    generate.py  greedy and sampled generation with the key/value cache

May import: NumPy and `minillm.engine`.
"""
