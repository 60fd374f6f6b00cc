"""Chunked reference scans vs the token-by-token recurrence: forward + backward seconds.

python bench/scan_ref.py [--lengths 512 1024 ...] [--heads 4] [--dim 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, time_it, write_json  # noqa: E402

from baton.kernels import chunk_gla_ref, chunk_ssd_ref, naive_recurrence  # noqa: E402


def fwd_bwd(fn, inputs) -> None:
    o, _ = fn(*inputs)
    o.sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--naive-max", type=int, default=8192, help="skip the naive loop above this length")
    args = parser.parse_args()
    H, D = args.heads, args.dim
    rows = []
    for gate, chunked in (("gla", chunk_gla_ref), ("ssd", chunk_ssd_ref)):
        for T in args.lengths:
            g_shape = (1, T, H, D) if gate == "gla" else (1, T, H)
            inputs = [
                torch.randn(1, T, H, D),
                torch.randn(1, T, H, D),
                torch.randn(1, T, H, D),
                -torch.rand(g_shape) * 0.1,
            ]
            inputs = [x.requires_grad_() for x in inputs]
            t_chunk = time_it(lambda f=chunked, x=inputs: fwd_bwd(f, x))
            row = {"gate": gate, "T": T, "chunked_s": round(t_chunk, 4)}
            if T <= args.naive_max:
                t_naive = time_it(lambda x=inputs: fwd_bwd(naive_recurrence, x), repeat=1, warmup=0)
                row |= {"naive_s": round(t_naive, 3), "speedup": round(t_naive / t_chunk, 1)}
            rows.append(row)
            print_table(rows[-1:], list(row))
    print()
    print_table(rows, ["gate", "T", "chunked_s", "naive_s", "speedup"])
    write_json("scan_ref", rows, heads=H, dim=D, device="cpu", what="forward+backward, batch 1, fp32")


if __name__ == "__main__":
    main()
