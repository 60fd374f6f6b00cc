"""Chunked-scan kernels, forward + backward: baton's Triton kernels against the PyTorch
reference and, when importable, flash-linear-attention's chunk_gla / chunk_simple_gla /
chunk_gated_delta_rule (for the delta rule, ``gdn``, baton's GPU path is its reference with the
chunk-to-chunk state walk in Triton).

python bench/kernels.py [--lengths 2048 8192 32768 65536] [--tokens 65536] [--heads 16] [--dim 128]
                        [--value-dim V] [--relay]

Shapes are those of a 1.3B model's mixer (hidden 2048 = 16 heads × 128), a fixed number of
tokens per batch (batch = tokens / T). TFLOP/s counts the chunked algorithm's dense matrix
products, per token and head: forward 2C(K+V) (intra-chunk scores and their product with v)
+ 4KV (state update and inter-chunk output), the delta rule's as ``models/flops.py:
delta_rule_flops``; backward counted as twice the forward. Memory
is the peak allocated during forward + backward beyond the inputs. The agreement check runs
first and also times each contender's first call (compiling, and autotuning baton's kernels);
the JSON records the settings the autotuner chose. Needs a GPU; on CPU it times the
reference only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, time_it, write_json  # noqa: E402

from baton.kernels import chunk_delta, chunk_delta_ref, chunk_gla_ref, chunk_ssd_ref  # noqa: E402
from baton.kernels.tuning_file import choices  # noqa: E402
from baton.models.flops import delta_rule_flops  # noqa: E402

CHUNK = 64


def contenders(gate: str, cuda: bool) -> dict:
    if gate == "gdn":  # the delta rule: its reference, baton's GPU path (the reference with the state walk in
        ours = {"torch-ref": chunk_delta_ref}  # Triton) and fla's fused kernels
        if cuda:
            ours["baton-walk"] = chunk_delta
        try:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        except ImportError:
            return ours
        if cuda:
            ours["fla"] = lambda q, k, v, g, beta, initial_state=None: chunk_gated_delta_rule(
                q, k, v, g, beta, initial_state=initial_state, output_final_state=True
            )
        return ours
    ours = {"torch-ref": chunk_gla_ref if gate == "gla" else chunk_ssd_ref}
    if cuda:
        from baton.kernels.ops import chunk_scan_triton

        ours["baton-triton"] = chunk_scan_triton
        try:
            from fla.ops.gla import chunk_gla
            from fla.ops.simple_gla import chunk_simple_gla
        except ImportError:
            pass
        else:
            fla = chunk_gla if gate == "gla" else chunk_simple_gla
            ours["fla"] = lambda q, k, v, g, initial_state=None: fla(
                q, k, v, g, initial_state=initial_state, output_final_state=True
            )
    return ours


def make_inputs(
    gate: str, B: int, T: int, H: int, D: int, device: str, dtype: torch.dtype, seed: int = 0, V: int | None = None
):
    """q, k [B, T, H, D], v [B, T, H, V] (V = D unless given), the gates (and the delta rule's beta)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k = (torch.randn(B, T, H, D, device=device, dtype=dtype, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V or D, device=device, dtype=dtype, generator=gen)
    k = F.normalize(k, dim=-1) if gate == "gdn" else k / D**0.5
    g_shape = (B, T, H, D) if gate == "gla" else (B, T, H)
    g = F.logsigmoid(torch.randn(g_shape, device=device, generator=gen)) / 16
    if gate != "gdn":
        return [x.requires_grad_() for x in (q, k, v, g.to(dtype))]
    beta = torch.sigmoid(torch.randn(B, T, H, device=device, generator=gen)).to(dtype)
    return [x.requires_grad_() for x in (q, k, v, g.float(), beta)]


def fwd_bwd(fn, inputs, do, ds):
    o, s = fn(*inputs)
    torch.autograd.backward([o, s], [do, ds])


def bench_one(fn, inputs, cuda: bool) -> tuple[float, float]:
    """Median seconds of forward + backward, and peak extra memory in GiB."""
    o, s = fn(*inputs)
    do, ds = torch.randn_like(o), torch.randn_like(s)
    del o, s
    run = lambda: fwd_bwd(fn, inputs, do, ds)  # noqa: E731
    if not cuda:
        return time_it(run), float("nan")
    from triton.testing import do_bench

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    ms = do_bench(run, warmup=50, rep=300, grad_to_none=inputs, return_mode="median")
    return ms / 1e3, peak


def agreement(gate: str, H: int, D: int, device: str, V: int | None = None) -> dict:
    """Relative difference of each contender's output and dq from the reference, bf16, T=1024;
    and the seconds of that first forward + backward, which compiles (and autotunes baton's
    kernels for these heads and head dims) unless Triton's cache already holds them."""
    inputs = make_inputs(gate, 1, 1024, H, D, device, torch.bfloat16, seed=1, V=V)
    result = {}
    ref_o = ref_dq = None
    for name, fn in contenders(gate, device == "cuda").items():
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        if name == "torch-ref":
            leaves = [x.detach().float().requires_grad_() for x in inputs]
        start = time.perf_counter()
        try:
            o, _ = fn(*leaves)
            (o.float() * torch.linspace(-1, 1, o.numel(), device=device).view_as(o)).sum().backward()
        except RuntimeError as err:  # e.g. flash-linear-attention refusing a Triton version
            result[name] = f"failed: {str(err)[:120]}"
            continue
        if device == "cuda":
            torch.cuda.synchronize()
        result[name] = {"first_s": round(time.perf_counter() - start, 2)}
        if ref_o is None:
            ref_o, ref_dq = o.float().detach(), leaves[0].grad.float()
            continue
        rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
        result[name] |= {"o": rel(o.float(), ref_o), "dq": rel(leaves[0].grad.float(), ref_dq)}
    return result


def profile_kernels(gate: str, B: int, T: int, H: int, D: int) -> None:
    """Per-kernel CUDA time of baton's forward + backward (torch.profiler), to see where it goes."""
    from baton.kernels.ops import chunk_scan_triton

    inputs = make_inputs(gate, B, T, H, D, "cuda", torch.bfloat16)
    o, s = chunk_scan_triton(*inputs)
    do, ds = torch.randn_like(o), torch.randn_like(s)
    for _ in range(3):
        fwd_bwd(chunk_scan_triton, inputs, do, ds)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fwd_bwd(chunk_scan_triton, inputs, do, ds)
        torch.cuda.synchronize()
    print(f"{gate} B={B} T={T}: CUDA time per kernel over 5 forward+backward passes")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


def relay_ops(cuda: bool) -> dict:
    """The two ops a rank adds around its scan under sequence parallelism."""
    from baton.kernels.relay_ref import add_state_correction_ref, segment_summary_ref

    ops = {"torch-ref": (segment_summary_ref, add_state_correction_ref)}
    if cuda:
        from baton.kernels.relay_triton import add_state_correction_triton, segment_summary_triton

        ops["baton-triton"] = (segment_summary_triton, add_state_correction_triton)
    return ops


def relay_overhead(gate: str, T: int, H: int, D: int, device: str, dtype: torch.dtype) -> list[dict]:
    """Forward + backward of the summary and the correction over a whole piece of T tokens
    (one document through every rank: the most they ever cover), beside the scan of it."""
    q, k, v, g = make_inputs(gate, 1, T, H, D, device, dtype)
    o = torch.randn(1, T, H, D, device=device, dtype=dtype, requires_grad=True)
    state = torch.randn(H, D, D, device=device, requires_grad=True)
    d_state, d_out = torch.randn(H, D, D, device=device), torch.randn_like(o)
    rows = []
    for name, (summary, correction) in relay_ops(device == "cuda").items():

        def run(summary=summary, correction=correction):
            _, S = summary(k, v, g, 0)
            out = correction(o.clone(), q, g, state, T, D**-0.5)
            torch.autograd.backward([S, out], [d_state, d_out])

        if device == "cuda":
            from triton.testing import do_bench

            ms = do_bench(run, warmup=20, rep=100, grad_to_none=[q, k, v, g, o, state], return_mode="median")
        else:
            ms = time_it(run) * 1e3
        rows.append({"gate": gate, "T": T, "impl": name, "summary+correction ms": round(ms, 3)})
    return rows


def toolchain() -> dict:
    """Triton's version and the ptxas it assembles for this GPU (a Hopper ptxas before CUDA
    13.3 can miscompile the kernels: see ``baton.kernels.backend.hopper_ptxas_warning``)."""
    import triton

    from baton.kernels.backend import triton_ptxas

    major, minor = torch.cuda.get_device_capability()
    return {"triton": triton.__version__, "ptxas": triton_ptxas(major * 10 + minor)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768, 65536])
    parser.add_argument("--tokens", type=int, default=65536, help="tokens per batch (batch = tokens / T)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128, help="key head dim (and value head dim, unless given)")
    parser.add_argument("--value-dim", type=int, help="value head dim (GLA and SSD; default: --dim)")
    parser.add_argument("--gates", nargs="+", default=["gla", "ssd", "gdn"])
    parser.add_argument("--profile", action="store_true", help="print per-kernel CUDA time at the first length")
    parser.add_argument("--ref-max", type=int, default=8192, help="skip the PyTorch reference above this length")
    parser.add_argument("--relay", action="store_true", help="also time the sequence-parallel summary + correction")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    H, D, V = args.heads, args.dim, args.value_dim or args.dim
    if V != D and "gdn" in args.gates:
        parser.error("--value-dim: the delta-rule contenders take one head dim")
    rows, checks = [], {}
    for gate in args.gates:
        checks[gate] = agreement(gate, H, D, device, V)
        print(f"{gate}: difference from the fp32 reference, first call's seconds (bf16, T=1024): {checks[gate]}")
        for T in args.lengths:
            B = max(1, args.tokens // T)
            per_head = delta_rule_flops(CHUNK, D, D) if gate == "gdn" else 2 * CHUNK * (D + V) + 4 * D * V
            flops = 3 * B * T * H * per_head
            for name, fn in contenders(gate, cuda).items():
                row = {"gate": gate, "B": B, "T": T, "impl": name}
                if name == "torch-ref" and T > args.ref_max:
                    continue
                inputs = make_inputs(gate, B, T, H, D, device, dtype, V=V)
                try:
                    seconds, mem = bench_one(fn, inputs, cuda)
                except torch.OutOfMemoryError:
                    row["ms"] = "oom"
                except RuntimeError:
                    row["ms"] = "failed"  # the reason is in the agreement check above
                else:
                    row |= {"ms": round(seconds * 1e3, 3), "TFLOP/s": round(flops / seconds / 1e12, 1)}
                    row["peak_GiB"] = round(mem, 2)
                rows.append(row)
                print_table(rows[-1:], list(row))
                del inputs
                if cuda:
                    torch.cuda.empty_cache()
    if args.profile and cuda:  # after the agreement checks, which time the first (tuning) calls
        for gate in args.gates:
            profile_kernels(gate, max(1, args.tokens // args.lengths[0]), args.lengths[0], H, D)
    relay = []
    if args.relay:
        for gate in [g for g in args.gates if g != "gdn"]:  # the delta rule's relay ops run on the reference
            for T in args.lengths:
                if cuda or T <= args.ref_max:
                    relay += relay_overhead(gate, T, H, D, device, dtype)
    print()
    print_table(rows, ["gate", "B", "T", "impl", "ms", "TFLOP/s", "peak_GiB"])
    if relay:
        print("\nsequence-parallel summary + correction over a whole piece of T tokens (batch 1):")
        print_table(relay, list(relay[0]))
    name = torch.cuda.get_device_name() if cuda else "cpu"
    tuned = choices() if cuda else {}  # what the autotuner chose, per kernel and shape key
    write_json(
        "kernels", rows, device=name, heads=H, dim=D, value_dim=V, chunk=CHUNK, dtype=str(dtype), agreement=checks,
        relay=relay, tuned=tuned, **(toolchain() if cuda else {}),
    )  # fmt: skip


if __name__ == "__main__":
    main()
