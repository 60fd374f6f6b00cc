"""``baton report RUN_DIR``: a per-rank table in the terminal and PNG plots of a run's profile
(and TensorBoard event files when ``tensorboard`` is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class ReportError(ValueError):
    """The run directory has no profile to report on."""


def load_profile(run_dir: Path) -> tuple[dict[int, list[dict]], list[dict]]:
    prof = Path(run_dir) / "profile"
    files = sorted(prof.glob("rank*.jsonl"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise ReportError(f"{prof}: no rank*.jsonl records (was the run made with profile.enabled=true?)")
    ranks = {}
    for f in files:
        try:
            ranks[int(f.stem[4:])] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ReportError(f"{f}: not JSON lines ({exc})") from exc
    summary_file = prof / "summary.jsonl"
    summaries = [json.loads(line) for line in summary_file.read_text().splitlines()] if summary_file.exists() else []
    return ranks, summaries


def rank_table(ranks: dict[int, list[dict]], summaries: list[dict]) -> list[dict]:
    flagged: dict[int, int] = {}
    for s in summaries:
        for r in s["stragglers"]:
            flagged[r] = flagged.get(r, 0) + 1
    rows = []
    for rank, recs in ranks.items():
        step_s = np.mean([r["step_s"] for r in recs])
        mfu = [r["mfu"] for r in recs if r.get("mfu") is not None]
        row = {
            "rank": rank,
            "steps": len(recs),
            "tokens/step": round(np.mean([r["tokens"] for r in recs])),
            "tok/s": round(np.mean([r["tokens_per_s"] for r in recs])),
            "step_s": round(step_s, 4),
        }
        for p in ("data", "compute", "relay", "grad_comm", "optimizer"):
            row[f"{p}%"] = round(100 * np.mean([r[f"{p}_s"] for r in recs]) / step_s, 1)
        row["relay_B/step"] = round(np.mean([r["relay_sent_bytes"] for r in recs]))
        row["mfu%"] = round(100 * np.mean(mfu), 1) if mfu else "-"
        row["straggler"] = f"{flagged[rank]}/{len(summaries)}" if rank in flagged else "no"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def _per_rank_lines(ax, ranks: dict[int, list[dict]], value) -> None:
    for rank, recs in ranks.items():
        ax.plot([r["step"] for r in recs], [value(r) for r in recs], label=f"rank {rank}")
    ax.legend(fontsize="small")


def _throughput(ax, ranks: dict[int, list[dict]], summaries: list[dict]) -> None:
    _per_rank_lines(ax, ranks, lambda r: r["tokens_per_s"])
    ax.set(xlabel="step", ylabel="tokens / s", title="Throughput per rank")


def _breakdown(ax, ranks: dict[int, list[dict]], summaries: list[dict]) -> None:
    bottom = np.zeros(len(ranks))
    for part in ("data", "compute", "relay", "grad_comm", "optimizer", "checkpoint"):
        heights = np.array([np.mean([r[f"{part}_s"] for r in recs]) for recs in ranks.values()])
        ax.bar([str(r) for r in ranks], heights, bottom=bottom, label=part)
        bottom += heights
    ax.set(xlabel="rank", ylabel="seconds per step (mean)", title="Step time breakdown")
    ax.legend(fontsize="small")


def _mfu(ax, ranks: dict[int, list[dict]], summaries: list[dict]) -> None:
    if any(r.get("mfu") is not None for recs in ranks.values() for r in recs):
        _per_rank_lines(ax, ranks, lambda r: 100 * (r["mfu"] or 0))
        ax.set(ylabel="MFU (%)", title="Model FLOPs utilisation")
    else:
        _per_rank_lines(ax, ranks, lambda r: r["model_flops"] / r["step_s"] / 1e9)
        ax.set(ylabel="model GFLOP/s", title="Model FLOP rate (no peak known for this device: no MFU)")
    ax.set(xlabel="step")


def _relay_bytes(ax, ranks: dict[int, list[dict]], summaries: list[dict]) -> None:
    ax.bar([str(r) for r in ranks], [np.mean([r["relay_sent_bytes"] for r in recs]) for recs in ranks.values()])
    ax.set(xlabel="rank", ylabel="bytes sent per step", title="Sequence-parallel relay traffic")


def _stragglers(ax, ranks: dict[int, list[dict]], summaries: list[dict]) -> None:
    if summaries:
        x = [s["steps"][1] for s in summaries]
        for rank in ranks:
            ax.plot(x, [s["ratios"][rank] for s in summaries], marker="o", label=f"rank {rank}")
        threshold = summaries[0].get("threshold")
        if threshold:
            ax.axhline(threshold, color="red", linestyle="--", label="straggler threshold")
    ax.set(xlabel="step", ylabel="compute / predicted (vs median rank)", title="Stragglers (1.0 = as planned)")
    ax.legend(fontsize="small")


PLOTS = {
    "tokens_per_s.png": _throughput,
    "step_breakdown.png": _breakdown,
    "mfu.png": _mfu,
    "relay_bytes.png": _relay_bytes,
    "stragglers.png": _stragglers,
}


def plot(ranks: dict[int, list[dict]], summaries: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in PLOTS.items():
        fig, ax = plt.subplots(figsize=(8, 4))
        draw(ax, ranks, summaries)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written


def write_tensorboard(ranks: dict[int, list[dict]], out: Path) -> Path | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    writer = SummaryWriter(str(out))
    for rank, recs in ranks.items():
        for r in recs:
            writer.add_scalar(f"tokens_per_s/rank{rank}", r["tokens_per_s"], r["step"])
            writer.add_scalar(f"step_s/rank{rank}", r["step_s"], r["step"])
    writer.close()
    return out


def report(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    ranks, summaries = load_profile(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    text = format_table(rank_table(ranks, summaries))
    pngs = plot(ranks, summaries, out)
    tb = write_tensorboard(ranks, out / "tensorboard")
    text += "\n\nplots: " + ", ".join(str(p) for p in pngs)
    if tb:
        text += f"\ntensorboard: {tb}"
    return text
