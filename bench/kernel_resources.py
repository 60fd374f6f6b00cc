"""What each Triton kernel costs a GPU's SM, from the compiler alone (no GPU needed).

python bench/kernel_resources.py [--arch 90] [--gates gla] [--dtype bfloat16] [--chunk 64] [--every-candidate]

Compiles the kernels of one forward + backward of the scan and the relay ops for compute
capability ``--arch`` (``baton.kernels.compile_offline``), at the bench's head dims (K = V =
128, chunk ``--chunk``), then assembles each kernel's PTX again with ptxas -v for its registers per
thread and spill bytes; shared memory comes from Triton. ``--every-candidate`` compiles every
launch setting the autotuner would time (minutes on 2 cores). Also shows which kernels feed
a Hopper tensor-core product (WGMMA) an operand held in registers, the pattern that CUDA 12's
ptxas can miscompile (triton-lang/triton#11781). Static numbers: what a setting occupies, not
how fast it runs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.kernels.backend import triton_ptxas  # noqa: E402
from baton.kernels.compile_offline import compile_one_step  # noqa: E402


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """Registers per thread and spill-store bytes, from the ptxas Triton uses for ``arch``."""
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"  # Triton targets sm_90a on Hopper
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        log = subprocess.run(
            [triton_ptxas(arch)[0], "-v", f"--gpu-name={gpu}", f"{tmp}/k.ptx", "-o", f"{tmp}/k.cubin"],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(registers.group(1)), int(spills.group(1)) if spills else 0


def wgmma_operand_a(ptx: str) -> str:
    """Where this kernel's WGMMAs take operand A from: registers, shared memory, or none."""
    sources = set()
    for instr in re.findall(r"wgmma\.mma_async[^;]*;", ptx):
        after_accumulators = instr[instr.index("}") + 1 :].lstrip(" ,\n\t")
        sources.add("registers" if after_accumulators.startswith("{") else "shared")
    return "+".join(sorted(sources)) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--gates", choices=["gla", "ssd"], default="gla")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--chunk", type=int, choices=[16, 32, 64, 128], default=64)
    parser.add_argument("--every-candidate", action="store_true")
    args = parser.parse_args()
    rows = []
    for record, kernel in compile_one_step(
        args.arch, args.gates, getattr(torch, args.dtype), args.chunk, args.every_candidate
    ):
        registers, spills = ptxas_usage(kernel.asm["ptx"], args.arch)
        rows.append({
            "kernel": record["kernel"].strip("_").removesuffix("_kernel"),
            "warps": record["warps"], "stages": record["stages"],
            **{tile: record["tiles"].get(tile, "") for tile in ("BK", "BV")},
            "registers": registers, "spill_bytes": spills, "shared_KiB": round(record["shared_bytes"] / 1024, 1),
            "wgmma_A": wgmma_operand_a(kernel.asm["ptx"]),
        })  # fmt: skip
        print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, list(rows[0]))
    write_json(
        f"kernel_resources_sm{args.arch}_{args.gates}_{args.dtype}_c{args.chunk}", rows, arch=args.arch,
        gates=args.gates, dtype=args.dtype, chunk=args.chunk, every_candidate=args.every_candidate, head_dims=128,
    )  # fmt: skip


if __name__ == "__main__":
    main()
