"""How the Triton kernels are launched: autotuning (warps, pipeline stages, tiles), the untuned
settings, tile sizes, and the tensor-core operand dtype. Shared by ``gla_triton.py`` and
``relay_triton.py``.

On a GPU each kernel is autotuned the first time it meets a shape; Triton keeps the choice in
its cache directory, and ``tuning_file.py`` in the run directory (``TUNERS`` holds every
kernel's tuner for that). With ``BATON_AUTOTUNE=0`` the kernels run untuned: the launch passes
its tiles and two stages. Under the interpreter they run untuned unless ``BATON_AUTOTUNE=1``
asks for tuning there too (timed by the wall clock; only the tiles change anything: tests).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_AUTOTUNE_SETTING = os.environ.get("BATON_AUTOTUNE")
AUTOTUNE = (
    _AUTOTUNE_SETTING.lower() not in ("0", "false", "off", "no") if _AUTOTUNE_SETTING is not None else not INTERPRET
)
TUNERS: dict[str, triton.runtime.Autotuner] = {}  # every tuned kernel's autotuner, by kernel name
_settings_timed = 0
SUB_BLOCK = 16
SMALL_TILE_WARPS = (1, 2, 4, 8)  # 16-row blocks of the intra-chunk kernels: few warps can do
LARGE_TILE_WARPS = (2, 4, 8)  # [C or BK, BV] tiles: one warp would spill
TILED_DIM = {"BK": "K", "BV": "V"}  # a tunable tile size and the head dim it tiles

# The intra-chunk kernels take most of a pass; the state walks are few programs on long
# sequences, where narrower tiles mean more of them. The per-chunk products (output, dv, the
# inter-chunk gradients) tune the value tile; their key tile stays 64, as a 32-wide one with
# 4 warps is the shape of a known Hopper miscompile under CUDA 12's ptxas (triton-lang/triton#11366).
INTRA_TUNING = dict(warps=SMALL_TILE_WARPS, stages=(2, 3), tiles={"BK": (32, 64, 128)})
STATE_TUNING = dict(stages=(2, 3), tiles={"BK": (32, 64), "BV": (32, 64)})
PRODUCT_TUNING = dict(tiles={"BK": (64,), "BV": (64, 128)})


def block(dim: int, cap: int = 64) -> int:
    """A power-of-two tile over a head dim: at least 16, at most ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(dim)))


def tuned(
    *key: str,
    warps: tuple[int, ...] = LARGE_TILE_WARPS,
    stages: tuple[int, ...] = (2, 3, 4),
    tiles: dict[str, tuple[int, ...]] | None = None,
    restore: tuple[str, ...] = (),
):
    """Autotune a kernel on the GPU it runs on, once per ``key`` (shape constants; Triton adds
    the dtypes), the choice cached on disk across processes: warps, pipeline stages and the
    sizes in ``tiles`` (each capped at the head dim it tiles). ``restore`` names outputs a
    kernel adds into in place, which the tuner's repeated runs must not accumulate.

    Not tuning (the interpreter, where warps and stages mean nothing, or ``BATON_AUTOTUNE=0``,
    as tuning compiles every candidate), the kernel runs with Triton's default warps and
    the launch passes the tile sizes and, for tiled kernels, two stages itself (:func:`untuned`).
    """
    if not AUTOTUNE:
        return lambda kernel: kernel
    tiles = tiles or {}
    configs = [
        triton.Config(dict(zip(tiles, sizes)), num_warps=w, num_stages=s)
        for sizes in itertools.product(*tiles.values())
        for w in warps
        for s in stages
    ]

    def capped(configs, named_args, **shape):
        distinct = {}
        for c in configs:
            sizes = {name: min(size, block(shape[TILED_DIM[name]], 128)) for name, size in c.kwargs.items()}
            setting = (*sizes.items(), c.num_warps, c.num_stages)
            distinct.setdefault(setting, triton.Config(sizes, num_warps=c.num_warps, num_stages=c.num_stages))
        return list(distinct.values())

    def decorate(kernel):
        tuner = triton.autotune(
            configs, key=list(key), prune_configs_by={"early_config_prune": capped} if tiles else None,
            restore_value=list(restore), cache_results=True, do_bench=_benchmark,
        )(kernel)  # fmt: skip
        TUNERS[kernel.__name__] = tuner
        return tuner

    return decorate


def _benchmark(kernel_call: Callable[[], None], quantiles: tuple[float, ...] | None = None, **kwargs):
    """Time one candidate launch setting, counted (:func:`settings_timed`): Triton's benchmark
    on a GPU, the wall clock of one run under the interpreter."""
    global _settings_timed
    _settings_timed += 1
    if INTERPRET:
        start = time.perf_counter()
        kernel_call()
        ms = (time.perf_counter() - start) * 1e3
        return [ms] * len(quantiles) if quantiles else ms
    return triton.testing.do_bench(kernel_call, quantiles=quantiles, **kwargs)


def settings_timed() -> int:
    """Candidate launch settings the autotuner has timed in this process (each one compiled
    and benchmarked: what a start pays before its first step when nothing was tuned before)."""
    return _settings_timed


def untuned(**tiles: int) -> dict[str, int]:
    """The tile sizes a launch passes when its kernel is not tuned (else the tuner picks them),
    with two pipeline stages: at three, chunks of 128 in fp32 need up to 225 KiB of shared
    memory, more than an A100 has (``bench/kernel_resources.py``)."""
    return {} if AUTOTUNE else {**tiles, "num_stages": 2}


def score_block(C: int, scalar: bool) -> int:
    """Rows of the intra-chunk kernels' blocks. Per-key-dim gates need 16-token sub-blocks
    (across them the decay factors through a reference row, within one it is taken row by
    row); with a scalar gate the pairwise decay is a plain matrix, so blocks can be whole
    chunks (up to 64 tokens), whose products fill the tensor cores' tiles."""
    return min(C, 64) if scalar else SUB_BLOCK


def intra_key_tile(K: int, scalar: bool) -> int:
    """Untuned key-dim tile of the intra-chunk kernels: per-key-dim gates run row loops over
    [16, BK] tiles, which want them narrow."""
    return block(K, 64 if scalar else 32)


def head_tiles(K: int, V: int) -> dict[str, int]:
    """Untuned key and value tiles of the kernels that tile both head dims."""
    return {"BK": block(K), "BV": block(V)}


def operands(x: Tensor) -> tuple[str, tl.dtype]:
    """Tensor-core operand dtype and the product precision: bf16/fp16 operands as given, fp32
    ones exact (not tf32). The interpreter's bf16 products are wrong (Triton 3.9), so there
    the operands are fp32; compiled kernels on a GPU use the real bf16 path."""
    if x.dtype == torch.float32 or INTERPRET:
        return "ieee", tl.float32
    return "tf32", {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[x.dtype]


def state_grid(K: int, V: int, walks: int) -> Callable[[dict], tuple[int, int, int]]:
    """One program per (key tile, value tile, walk): the walks are the sequences times heads,
    or the splits of a segment times heads."""
    return lambda tile: (triton.cdiv(K, tile["BK"]), triton.cdiv(V, tile["BV"]), walks)
