"""Classic toy tasks (copy, reverse, sort, addition) over digit tokens, for tests that need
a tiny tokenizer and prompted examples with known answers (test_world, test_evaluate)."""
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from minillm.data.tokenizer import WordTokenizer

TOY_TASKS = ("copy", "reverse", "sort", "addition")


@dataclass(frozen=True)
class ToyExample:
    prompt: Tuple[int, ...]
    answer: Tuple[int, ...]
    prompt_text: str
    answer_text: str


def toy_tokenizer(n_sentinels: int = 8) -> WordTokenizer:
    """Digits 0-9, the task names, and ``: + =``."""
    return WordTokenizer([str(d) for d in range(10)] + list(TOY_TASKS) + [":", "+", "="], n_sentinels)


def _random_number(rng, min_len, max_len):
    """A number with a uniformly drawn digit count (no leading zeros)."""
    digits = int(rng.integers(min_len, max_len + 1))
    return int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10**digits))


def toy_examples(name: str, n: int, seed: int = 0, min_len: int = 1, max_len: int = 8,
                 tokenizer: WordTokenizer = None) -> List[ToyExample]:
    """``n`` examples of a classic toy task over digit tokens, e.g. ``"reverse : 3 1 4 ="``
    -> ``"4 1 3"``; for addition ``"addition : 1 2 + 7 ="`` -> ``"1 9"`` (numbers of
    ``min_len``..``max_len`` digits)."""
    if name not in TOY_TASKS:
        raise ValueError(f"toy task must be one of {TOY_TASKS}, got {name!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    tok = tokenizer or toy_tokenizer()
    rng = np.random.default_rng([int(seed), TOY_TASKS.index(name)])
    out = []
    for _ in range(int(n)):
        if name == "addition":
            a, b = (_random_number(rng, min_len, max_len) for _ in range(2))
            body, answer = f"{' '.join(str(a))} + {' '.join(str(b))}", " ".join(str(a + b))
        else:
            digits = rng.integers(0, 10, size=int(rng.integers(min_len, max_len + 1))).tolist()
            result = {"copy": digits, "reverse": digits[::-1], "sort": sorted(digits)}[name]
            body, answer = " ".join(map(str, digits)), " ".join(map(str, result))
        prompt = f"{name} : {body} ="
        out.append(ToyExample(tuple(int(i) for i in tok.encode(prompt)),
                              tuple(int(i) for i in tok.encode(answer)), prompt, answer))
    return out
