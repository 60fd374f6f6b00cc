"""A synthetic language with long-range structure, so a falling loss means something.

Each document opens with a random name that it repeats at its very end (a dependency that
spans the whole document), and in between holds episodes of three tasks that recurrent
models find hard for different reasons:

    recall: associative recall  -- ``recall k=3 q=8 z=1 ? q=8``
    copy:   copying a string    -- ``copy xkqv|xkqv``
    count:  state tracking      -- ``count +3+4-2=5`` (a running sum mod 10)

The number of episodes per document is log-normal, so lengths are long-tailed: most
documents are short and a few are very long, as in real pretraining corpora.

:func:`running_sums` is a pure state-tracking task apart (parity, modular addition), for
``bench/state_tracking.py``.
"""

from __future__ import annotations

import string
from collections.abc import Iterator

import numpy as np

LETTERS = np.array(list(string.ascii_lowercase))


def _word(rng: np.random.Generator, lo: int, hi: int) -> str:
    return "".join(rng.choice(LETTERS, size=int(rng.integers(lo, hi + 1))))


def _recall(rng: np.random.Generator) -> str:
    keys = rng.choice(LETTERS, size=int(rng.integers(3, 9)), replace=False)
    values = rng.integers(0, 10, size=len(keys))
    asked = int(rng.integers(len(keys)))
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"recall {pairs} ? {keys[asked]}={values[asked]}"


def _copy(rng: np.random.Generator) -> str:
    word = _word(rng, 3, 12)
    return f"copy {word}|{word}"


def _count(rng: np.random.Generator) -> str:
    steps = rng.integers(-4, 5, size=int(rng.integers(2, 8)))
    return "count " + "".join(f"{s:+d}" for s in steps) + f"={int(steps.sum()) % 10}"


TASKS = (_recall, _copy, _count)


def synthetic_document(rng: np.random.Generator, mean_log_episodes: float = 1.5, sigma: float = 1.3) -> str:
    n_episodes = max(1, min(4000, int(rng.lognormal(mean_log_episodes, sigma))))
    name = _word(rng, 4, 8)
    episodes = [TASKS[i](rng) for i in rng.integers(0, len(TASKS), size=n_episodes)]
    return f"doc {name}\n" + "\n".join(episodes) + f"\nend {name}\n"


def synthetic_documents(n_docs: int, seed: int) -> Iterator[str]:
    rng = np.random.default_rng(seed)
    for _ in range(n_docs):
        yield synthetic_document(rng)


def running_sums(rng: np.random.Generator, lengths: list[int], modulus: int) -> tuple[np.ndarray, np.ndarray]:
    """A state-tracking task: parity (``modulus`` 2) or modular addition. Sequences of n random
    digits ``x_1..x_n`` in [0, modulus), packed one after the other, labelled at every digit with
    the running sum ``s_t = (x_1 + ... + x_t) mod modulus``: the label of token t is not the
    next token but the state after it, which no window of recent tokens determines. Returns
    the tokens and their labels."""
    tokens = [rng.integers(0, modulus, size=n) for n in lengths]
    return np.concatenate(tokens), np.concatenate([np.cumsum(x) % modulus for x in tokens])
