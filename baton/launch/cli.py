"""The ``baton`` command: ``train``, ``tune``, ``config``, ``memory``, ``submit``, ``data build``, ``data synth``,
``report``, ``replay``, ``generate``, ``eval``, ``export``, ``import``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from baton.data.corpus import CorpusError


def _config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``baton train key=value ...`` has no file: its first argument is an override."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, overrides


def _train(args: argparse.Namespace) -> None:
    from baton.config import load_config
    from baton.dist.env import leave_together
    from baton.launch.train import Trainer

    trainer = Trainer(load_config(*_config_and_overrides(args)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    leave_together()


def _tune(args: argparse.Namespace) -> None:
    from baton.config import load_config
    from baton.launch.tune import tune

    done = tune(load_config(*_config_and_overrides(args)))
    print(
        f"baton tune: {done['timed']} launch settings timed in {done['seconds']:.1f}s "
        f"({done['loaded']} choices were already in the file); {done['saved']} choices in {done['file']}"
    )


def _config(args: argparse.Namespace) -> None:
    from baton.config import load_config, to_yaml

    print(to_yaml(load_config(*_config_and_overrides(args))), end="")


def _memory(args: argparse.Namespace) -> None:
    import torch

    from baton.config import load_config
    from baton.parallel.budget import GIB, MemoryBudget, check_fits, report

    cfg = load_config(*_config_and_overrides(args))
    if args.gpu_memory is not None:
        device_bytes = int(args.gpu_memory * GIB)
    else:  # this machine's GPU, if it has one
        device_bytes = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
    budget = MemoryBudget(cfg, args.world, device_bytes)
    tokens = args.tokens or -(-cfg.data.tokens_per_batch // args.world)
    print(report(budget, tokens))
    check_fits(budget, tokens)


def _replay(args: argparse.Namespace) -> int:
    from baton.launch.replay import relative, replay_step

    replay = replay_step(Path(args.run_dir), args.step, args.overrides)
    print(
        f"step {replay.step} of {args.run_dir}: {replay.world_size} rank(s) logged it; "
        f"replayed in one process ({replay.dtype} on {replay.device})"
    )
    print(replay.table())
    if args.rtol is None:
        return 0
    pairs = [(replay.loss, replay.logged_loss), (replay.grad_norm, replay.logged_grad_norm)]
    worst = max(relative(ours, logged) for ours, logged in pairs if logged is not None)
    if worst > args.rtol:
        print(f"baton: replay differs from the log by {worst:.2e} relative, over --rtol {args.rtol:g}", file=sys.stderr)
        return 1
    return 0


def _generate(args: argparse.Namespace) -> None:
    from baton.launch.generate import generate_text

    texts = generate_text(
        Path(args.run_dir), args.prompt, args.max_tokens, args.temperature, args.top_p, args.seed,
        args.checkpoint, args.overrides,
    )  # fmt: skip
    for prompt, text in zip(args.prompt, texts):
        print(f"{prompt}{text}\n")


def _eval(args: argparse.Namespace) -> None:
    import json

    from baton.dist.env import discover, leave_together

    if args.world > 1 and "RANK" not in os.environ:  # again, under torchrun: one process per rank
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.world}"]
        os.execv(sys.executable, [sys.executable, *torchrun, "-m", "baton.launch.cli", *sys.argv[1:]])
    from baton.launch.evaluate import evaluate_corpus

    result = evaluate_corpus(Path(args.run_dir), args.data, args.checkpoint, tuple(args.overrides), args.docs)
    if discover().is_main:
        fields = {k: getattr(result, k) for k in ("loss", "perplexity", "bits_per_byte", "documents", "tokens")}
        print(json.dumps(fields) if args.json else result.summary())
    leave_together()


def _submit(args: argparse.Namespace) -> None:
    from baton.launch.submit import submit

    config, overrides = _config_and_overrides(args)
    submit(config, overrides, args.nodes, args.gpus_per_node, args.procs_per_node, args.time, args.partition,
           args.dry_run)  # fmt: skip


def _data_build(args: argparse.Namespace) -> None:
    from baton.data.build import build_corpus

    corpus = build_corpus(
        args.inputs, args.out, args.tokenizer, args.vocab_size, args.workers, args.text_field, args.eot_token
    )
    print(f"{corpus.path}: {corpus.n_docs} documents, {corpus.n_tokens} tokens, vocabulary {corpus.vocab_size}")


def _data_synth(args: argparse.Namespace) -> None:
    from baton.data.build import synthetic_corpus

    corpus = synthetic_corpus(args.out, args.docs, args.seed)
    print(f"{corpus.path}: {corpus.n_docs} documents, {corpus.n_tokens} tokens")


def _report(args: argparse.Namespace) -> None:
    from baton.profile.report import report

    print(report(args.run_dir))


def _export(args: argparse.Namespace) -> None:
    from baton.checkpoint import CheckpointError, latest_checkpoint
    from baton.checkpoint.export import export_safetensors, load_model_state

    path = Path(args.checkpoint)
    if (path / "checkpoints").is_dir():  # a run directory: its newest complete checkpoint
        newest = latest_checkpoint(path / "checkpoints")
        if newest is None:
            raise CheckpointError(f"{path / 'checkpoints'}: no complete checkpoint to export")
        path = newest
    elif not (path / "trainer.json").is_file():
        raise CheckpointError(f"{path}: neither a run directory with checkpoints nor a checkpoint")
    if args.format == "hf":
        import json

        from baton.checkpoint.hf import check_qwen35, export_hf
        from baton.config import ModelConfig

        check_qwen35(ModelConfig(**json.loads((path / "trainer.json").read_text())["model"]))  # before the weights
        config, state = load_model_state(path)
        target = export_hf(config, state, Path(args.out), str(path), args.force)
        print(f"{target}: {path} as transformers' Qwen3_5ForCausalLM (AutoModelForCausalLM.from_pretrained)")
        return
    target = export_safetensors(path, Path(args.out))
    print(f"{target}: weights of {path} (and config.json beside it)")


def _import(args: argparse.Namespace) -> None:
    from baton.checkpoint.hf import import_hf

    out = import_hf(Path(args.hf_dir), Path(args.out), args.force)
    print(f"{out}: {args.hf_dir} as a baton model; train from it: baton train {out / 'config.yaml'}")


def _count(text: str, least: int = 1) -> int:
    """An argparse type: an integer >= ``least`` (argparse names the option on failure)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def _positive(text: str) -> float:
    return _number(text, lambda v: v > 0, "> 0")


def _number(text: str, ok, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def _non_negative(text: str) -> float:
    return _number(text, lambda v: v >= 0, ">= 0")


def _probability(text: str) -> float:
    return _number(text, lambda v: 0 < v <= 1, "in (0, 1]")


def _count_or_zero(text: str) -> int:
    return _count(text, least=0)


def _configured(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand that takes a config: ``baton NAME [config.yaml] [key=value ...]``."""
    parser = sub.add_parser(name, help=f"{help}: baton {name} [config.yaml] [key=value ...]")
    parser.add_argument("config", nargs="?", help="YAML config (default: the built-in tiny-cpu preset)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=100 model.mixer=ssd")
    parser.set_defaults(func=func)
    return parser


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _add_training_commands(sub) -> None:
    _configured(sub, "train", _train, "train a model")
    _configured(sub, "tune", _tune, "autotune the Triton kernels for a config on this GPU, into its run directory")
    _configured(sub, "config", _config, "print the resolved config")
    mem = _configured(sub, "memory", _memory, "what one rank holds in memory, and what fits")
    mem.add_argument("--gpu-memory", type=_positive, help="GiB per GPU (default: this machine's GPU; none: no limit)")
    mem.add_argument("--world", type=_count, default=1, help="ranks (default 1)")
    mem.add_argument("--tokens", type=_count, help="tokens per rank (default: data.tokens_per_batch / world)")
    sub_ = _configured(sub, "submit", _submit, "submit a training job to SLURM")
    sub_.add_argument("--nodes", type=_count, default=1)
    sub_.add_argument("--gpus-per-node", type=_count_or_zero, default=0, help="GPUs (and training processes) per node")
    sub_.add_argument("--procs-per-node", type=_count, help="training processes per node (default: the GPUs, or 1)")
    sub_.add_argument("--time", default="1:00:00", help="time limit, as sbatch takes it (default 1:00:00)")
    sub_.add_argument("--partition")
    sub_.add_argument("--dry-run", action="store_true", help="write and print the script, do not submit")


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="build token corpora").add_subparsers(dest="data_command", required=True)
    build = data.add_parser("build", help="tokenize .txt / .jsonl(.gz) / .parquet files into a corpus")
    build.add_argument("inputs", nargs="+", help="files or directories (.txt: a document per file; .jsonl(.gz): a "
                       "JSON object per line; .parquet: a row per document)")  # fmt: skip
    build.add_argument("--out", required=True, help="corpus directory to create")
    build.add_argument("--tokenizer", default="byte", help="byte, bpe (trained here), or a tokenizer.json path")
    build.add_argument("--vocab-size", type=_count, default=8192, help="BPE vocabulary size")
    build.add_argument("--workers", type=_count, default=default_workers(), help="tokenizing processes")
    build.add_argument("--text-field", default="text", help="the JSON field or parquet column (default text)")
    build.add_argument("--eot-token", help="the tokenizer.json's end-of-text token (default: found by name)")
    build.set_defaults(func=_data_build)
    synth = data.add_parser("synth", help="generate the synthetic corpus")
    synth.add_argument("--out", required=True)
    synth.add_argument("--docs", type=_count, default=20000)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_data_synth)


def _on_run(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand on a run directory, ``key=value`` overrides applying to its config."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="over the run's config, e.g. train.device=cpu")
    parser.set_defaults(func=func)
    return parser


def _add_run_commands(sub) -> None:
    rep = sub.add_parser("report", help="per-rank throughput table and plots of a run: baton report RUN_DIR")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_report)
    rpl = _on_run(sub, "replay", _replay, "recompute a logged step in one process: baton replay RUN_DIR --step N")
    rpl.add_argument("--step", type=_count, required=True, help="the logged step to recompute")
    rpl.add_argument("--rtol", type=float, help="exit with status 1 if loss or gradient norm differ by more (relative)")
    gen = _on_run(sub, "generate", _generate, "continue prompts: baton generate RUN_DIR --prompt TEXT")
    gen.add_argument("--prompt", action="append", required=True, help="text to continue (repeat for several, batched)")
    gen.add_argument("--checkpoint", help="a checkpoint directory (default: the run's newest)")
    gen.add_argument("--max-tokens", type=_count, default=200, help="tokens to generate per prompt (default 200)")
    gen.add_argument("--temperature", type=_non_negative, default=0.8, help="0: greedy (default 0.8)")
    gen.add_argument("--top-p", type=_probability, default=0.95, help="nucleus sampling mass (default 0.95)")
    gen.add_argument("--seed", type=int, default=0)
    ev = _on_run(sub, "eval", _eval, "loss, perplexity and bits per byte on a corpus: baton eval RUN_DIR --data DIR")
    ev.add_argument("--data", required=True, help="a corpus directory (baton data build)")
    ev.add_argument("--checkpoint", help="a checkpoint directory (default: the run's newest)")
    ev.add_argument("--docs", type=_count_or_zero, default=0, help="evaluate the first this many documents (0: all)")
    ev.add_argument("--world", type=_count, default=1, help="processes, through torchrun (default 1)")
    ev.add_argument("--json", action="store_true", help="print one JSON record")
    exp = sub.add_parser("export", help="consolidate a checkpoint into model.safetensors + config.json")
    exp.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest checkpoint)")
    exp.add_argument("--out", required=True, help="directory to write into")
    exp.add_argument(
        "--format", choices=("baton", "hf"), default="baton",
        help="baton: baton's safetensors and config; hf: a transformers model directory (Qwen3.5 text)",
    )  # fmt: skip
    exp.add_argument("--force", action="store_true", help="replace a non-empty --out directory (hf)")
    exp.set_defaults(func=_export)
    imp = sub.add_parser("import", help="a transformers Qwen3.5 text model as a baton model to train from")
    imp.add_argument("hf_dir", help="a transformers model directory (config.json, safetensors weights)")
    imp.add_argument("--out", required=True, help="directory to write into")
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    imp.set_defaults(func=_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baton", description="Distributed training of recurrent language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    _add_data_commands(sub)
    _add_run_commands(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """A command's config file and ``key=value`` overrides before or after its flags (``baton
    memory c.yaml --world 8 key=value``): argparse matches positionals in one run, so what it
    leaves over joins them; anything else left over is an error, as usual."""
    args, extra = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    for item in extra:
        if not takes_overrides or item.startswith("-"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if "=" in item:
            args.overrides = [*args.overrides, item]
        elif getattr(args, "config", "") is None and not args.overrides:
            args.config = item
        else:
            parser.error(f"unrecognized arguments: {item} (overrides are key=value)")
    return args


def main(argv: list[str] | None = None) -> int:
    from baton.checkpoint import CheckpointError
    from baton.config import ConfigError
    from baton.dist.env import DistSetupError, end_process
    from baton.launch.train import TrainingDiverged
    from baton.parallel.plan import PlanError
    from baton.profile.report import ReportError

    args = parse_args(build_parser(), argv)
    try:
        code = args.func(args)
    except (CheckpointError, ConfigError, CorpusError, DistSetupError, PlanError, ReportError) as exc:
        print(f"baton: error: {exc}", file=sys.stderr)
        return end_process(2)
    except TrainingDiverged as exc:
        print(f"baton: error: {exc}", file=sys.stderr)
        return end_process(1)
    except KeyboardInterrupt:
        print("baton: interrupted", file=sys.stderr)
        return 130
    return end_process(code or 0)


if __name__ == "__main__":
    sys.exit(main())
