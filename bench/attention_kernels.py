"""The attention op's paths: FlexAttention (the GPU kernel) against the blockwise reference,
forward and backward over a packed stream of documents with a prefix, at the 1.3B hybrid's
heads (16 query heads over 2 key/value heads of 128 dims); each case's error against the
reference and its time.

    python bench/attention_kernels.py [--lengths 8192 32768] [--docs 4] [--prefix 4096]

On CPU FlexAttention has no backward: there it times the reference alone.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, time_it, write_json  # noqa: E402

from baton.kernels.attention_flex import attention_flex  # noqa: E402
from baton.kernels.attention_ref import attention_ref  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--prefix", type=int, default=4096)
    parser.add_argument("--heads", type=int, nargs=3, default=[16, 2, 128], metavar=("H", "HK", "D"))
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    H, Hk, D = args.heads
    rows = []
    for T in args.lengths:
        gen = torch.Generator().manual_seed(T)
        shapes = [(1, T, H, D), (1, T, Hk, D), (1, T, Hk, D), (1, args.prefix, Hk, D), (1, args.prefix, Hk, D)]
        leaves = [torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for s in shapes]
        cu = torch.linspace(0, T, args.docs + 1).long().to(device)
        weights = torch.randn(1, T, H, D, generator=gen).to(device, dtype)

        def step(fn, leaves=leaves, cu=cu, weights=weights):
            o, _ = fn(*leaves[:3], cu, *leaves[3:])
            grads = torch.autograd.grad((o.float() * weights).sum(), leaves)
            return [o, *grads]

        paths = {"reference": attention_ref}
        if device == "cuda":
            paths["flex"] = attention_flex
        results = {name: step(fn) for name, fn in paths.items()}  # also the first (compiling) call
        for name, fn in paths.items():
            ref = results["reference"]
            error = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(results[name], ref))
            rows.append(
                {
                    "T": T,
                    "path": name,
                    "fwd_bwd_ms": round(1e3 * time_it(lambda fn=fn: step(fn)), 2),
                    "rel_error": f"{error:.1e}",
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "dtype": str(dtype).removeprefix("torch."),
                }
            )
        print_table(rows[-len(paths) :], list(rows[-1]))
    write_json("attention_kernels", rows, heads=[H, Hk, D], docs=args.docs, prefix=args.prefix)


if __name__ == "__main__":
    main()
