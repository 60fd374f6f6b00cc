"""The autotuner's choices kept in the run directory (``tuning.json``), so that a restart, also
a requeued job on other nodes with the same GPU model, launches tuned kernels without timing
a single candidate again. ``baton tune`` writes the file ahead of a job.

Triton caches its own choices too, but on the node's disk (``~/.triton``), which a job landing
on fresh nodes does not have. The file is plain JSON: per kernel, its tuning keys (shape
constants and dtypes) and the chosen warps, stages and tiles, with the GPU and Triton version
they were chosen on; a file of another GPU model or Triton is not used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

FILE_NAME = "tuning.json"


def device_name() -> str:
    """What the choices are valid for: the GPU model, or the interpreter on a CPU."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "triton-interpreter"


def _origin() -> dict:
    import triton

    return {"device": device_name(), "triton": triton.__version__}


def _tuners() -> dict:
    """Every tuned kernel's autotuner (their modules register them when imported)."""
    import baton.kernels.gla_triton  # noqa: F401
    import baton.kernels.relay_triton  # noqa: F401
    from baton.kernels.tuning import TUNERS

    return TUNERS


def choices() -> dict[str, list]:
    """Every tuner's choices, as the file keeps them: per kernel, [key, launch setting] pairs."""
    return {
        name: [[list(key), {"kwargs": c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}]
               for key, c in tuner.cache.items()]
        for name, tuner in sorted(_tuners().items()) if tuner.cache
    }  # fmt: skip


def settings_timed() -> int:
    """Candidate launch settings timed in this process (see ``tuning.py``)."""
    from baton.kernels.tuning import settings_timed as timed

    return timed()


def count_choices() -> int:
    """Choices the tuners hold now (loaded or timed)."""
    return sum(len(entries) for entries in choices().values())


def load_choices(path: Path) -> tuple[int, str]:
    """Give the tuners the choices saved at ``path``; the number given, and why none were when
    there were none."""
    if not path.exists():
        return 0, f"no {path.name} yet"
    import triton

    try:
        saved = json.loads(path.read_text())
        origin, kernels = {k: saved[k] for k in ("device", "triton")}, saved["kernels"]
    except (ValueError, KeyError, TypeError) as exc:
        return 0, f"{path} is not a tuning file ({exc})"
    if origin != _origin():
        return 0, f"{path} was tuned on {origin['device']} with Triton {origin['triton']}"
    given, tuners = 0, _tuners()
    if not tuners:
        return 0, "kernel tuning is off (BATON_AUTOTUNE)"
    for name, entries in kernels.items():
        if name not in tuners:  # a kernel of another baton version
            continue
        for key, c in entries:
            config = triton.Config(c["kwargs"], num_warps=c["num_warps"], num_stages=c["num_stages"])
            tuners[name].cache[tuple(key)] = config
            given += 1
    return given, "" if given else f"{path} holds no choices for these kernels"


def save_choices(path: Path) -> int:
    """Write every tuner's choices to ``path`` (atomically), with those already there for
    shapes this process did not meet; the number written."""
    kernels = choices()
    try:
        saved = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        saved = {}
    if {k: saved.get(k) for k in ("device", "triton")} == _origin():
        for name, entries in saved.get("kernels", {}).items():
            known = {json.dumps(key) for key, _ in kernels.get(name, [])}
            kernels.setdefault(name, []).extend(e for e in entries if json.dumps(e[0]) not in known)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({**_origin(), "kernels": kernels}, indent=1) + "\n")
    tmp.replace(path)
    return sum(len(entries) for entries in kernels.values())
