"""The job's configuration, on the ground floor: typed dataclasses + OmegaConf (YAML files and
``key=value`` overrides). Every other module imports it downward (as torchtitan's job config),
so the choices of keys whose values name an implementation are listed here.

Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

BACKENDS = ("auto", "triton", "torch")  # train.kernels: auto = Triton on CUDA, the PyTorch reference elsewhere
POLICIES = ("none", "full", "mixer")  # train.activation_checkpoint (parallel/recompute.py)
ENGINES = ("none", "fsdp2", "deepspeed")  # parallel.zero.engine (parallel/zero.py)


MIXER_NAMES = ("gla", "ssd", "gdn", "paragru", "paralstm", "attn")  # attn: gated full attention (hybrids)


@dataclass
class ModelConfig:
    vocab_size: int = 257
    d_model: int = 128
    n_layers: int = 2
    mixer: str = "gla"  # gla | ssd | gdn | paragru | paralstm | attn, every layer's (without layer_pattern)
    layer_pattern: str = ""  # per-layer mixers, cycled over n_layers, e.g. "gdn,gdn,gdn,attn" ("": `mixer` everywhere)
    n_heads: int = 2  # GLA, GDN, ParaGRU/ParaLSTM heads; SSD derives its heads from expand * d_model / head_dim
    expand_k: float = 0.5  # GLA key width = expand_k * d_model
    expand_v: float = 1.0  # GLA value width = expand_v * d_model
    gate_low_rank: int = 16  # GLA forget gate: d_model -> low rank -> key width
    gate_normalizer: float = 16.0  # GLA: log-gate divided by this (slow decay at init)
    ssd_expand: int = 2
    ssd_head_dim: int = 32
    ssd_state_dim: int = 16
    gdn_head_dim: int = 64  # GDN key (and query) width per head
    gdn_expand_v: float = 2.0  # GDN value width per head = gdn_expand_v * gdn_head_dim
    allow_neg_eigval: bool = False  # GDN: beta in [0, 2] (transition eigenvalues in [-1, 1])
    newton_iterations: int = 3  # ParaGRU/ParaLSTM: Newton steps per forward (each a relayed linear scan)
    newton_residual: bool = False  # ParaGRU/ParaLSTM: log ‖h − f(h)‖ / ‖h‖ per layer (one more cell pass)
    recurrent_weights: str = "diagonal"  # ParaGRU/ParaLSTM: Newton's solves need diagonal recurrent weights
    conv_size: int = 4  # SSD and GDN short causal conv width
    # Gated attention (Qwen3-Next / Qwen3.5): grouped-query heads, per-head q/k RMSNorm, partial
    # rotary, a sigmoid output gate from the layer input
    attn_heads: int = 4
    attn_kv_heads: int = 2  # a divisor of attn_heads
    attn_head_dim: int = 64  # queries', keys' and values'
    rotary_fraction: float = 0.25  # of attn_head_dim rotated (an even number of dims)
    rotary_theta: float = 10_000_000.0
    attn_block: int = 128  # the reference attention's query/key block (memory O(T * block))
    mlp_ratio: float = 4.0  # SwiGLU hidden = mlp_ratio * 2/3 * d_model, rounded up to 64
    tie_embeddings: bool = True
    chunk_size: int = 64
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def validate(self) -> None:
        """Raise ValueError naming the ``model.*`` key that is out of range."""
        if self.mixer not in MIXER_NAMES:
            raise ValueError(f"model.mixer must be one of {', '.join(MIXER_NAMES)}, got {self.mixer!r}")
        unknown = [name for name in self.pattern if name not in MIXER_NAMES]
        if unknown:
            raise ValueError(
                f"model.layer_pattern={self.layer_pattern!r} names {unknown[0]!r}: each entry must be one of "
                f"{', '.join(MIXER_NAMES)} (comma-separated)"
            )
        if all(name == "attn" for name in self.layer_mixers):
            key = "model.layer_pattern" if self.pattern else "model.mixer"
            raise ValueError(f"{key}: attn needs recurrent layers beside it (a hybrid); baton trains recurrent LMs")
        for name in (
            "vocab_size", "d_model", "n_layers", "n_heads", "chunk_size", "conv_size",
            "gate_low_rank", "ssd_expand", "ssd_head_dim", "ssd_state_dim", "gdn_head_dim",
            "attn_heads", "attn_kv_heads", "attn_head_dim", "attn_block",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "expand_k", "expand_v", "gdn_expand_v", "gate_normalizer", "mlp_ratio", "norm_eps", "init_std",
            "rotary_theta",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        for name in sorted(set(self.layer_mixers)):
            self.for_mixer(name)._validate_mixer()

    @property
    def pattern(self) -> list[str]:
        """The layer pattern's entries (empty without one)."""
        return [name.strip() for name in self.layer_pattern.split(",")] if self.layer_pattern.strip() else []

    @property
    def layer_mixers(self) -> list[str]:
        """Each layer's mixer: the pattern cycled over ``n_layers``, or ``mixer`` everywhere."""
        pattern = self.pattern or [self.mixer]
        return [pattern[i % len(pattern)] for i in range(self.n_layers)]

    def for_mixer(self, name: str) -> ModelConfig:
        """This config as one layer of mixer ``name`` sees it (what per-layer counts read)."""
        return replace(self, mixer=name, layer_pattern="")

    @property
    def describe(self) -> str:
        """The mixers, as a banner names them: ``gdn`` or ``gdn,gdn,gdn,attn``."""
        return ",".join(self.pattern) if self.pattern else self.mixer

    def _validate_mixer(self) -> None:
        if self.mixer == "attn":
            self._validate_attention()
        elif self.mixer == "gla":
            for name, width in (("expand_k", self.key_dim), ("expand_v", self.value_dim)):
                if width < self.n_heads or width % self.n_heads:
                    raise ValueError(
                        f"model.{name} * model.d_model = {width} must be a multiple of model.n_heads={self.n_heads}"
                    )
        elif self.mixer == "gdn":
            self._validate_gdn()
        elif self.newton:
            self._validate_newton()
        elif (self.ssd_expand * self.d_model) % self.ssd_head_dim:
            raise ValueError(
                f"model.ssd_expand * model.d_model = {self.ssd_expand * self.d_model} must be divisible "
                f"by model.ssd_head_dim={self.ssd_head_dim}"
            )

    def _validate_newton(self) -> None:
        if self.newton_iterations < 1:
            raise ValueError(
                f"model.newton_iterations must be >= 1, got {self.newton_iterations}: the first guess f(0, x) "
                "alone ignores the recurrence"
            )
        if self.recurrent_weights != "diagonal":
            raise ValueError(
                f"model.recurrent_weights={self.recurrent_weights!r}: {self.mixer} is solved by Newton's method "
                "through diagonal (ParaGRU) or 2x2 block-diagonal (ParaLSTM) scans, which needs 'diagonal'"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be a multiple of model.n_heads={self.n_heads}")

    def _validate_attention(self) -> None:
        H, Hk, D = self.attn_heads, self.attn_kv_heads, self.attn_head_dim
        if H % Hk:
            raise ValueError(
                f"model.attn_heads={H} must be a multiple of model.attn_kv_heads={Hk} (grouped-query attention)"
            )
        if not 0 <= self.rotary_fraction <= 1:
            raise ValueError(f"model.rotary_fraction must be in [0, 1], got {self.rotary_fraction}")
        rotated = self.rotary_fraction * D
        if rotated != int(rotated) or int(rotated) % 2:
            raise ValueError(
                f"model.rotary_fraction={self.rotary_fraction} of model.attn_head_dim={D} rotates {rotated:g} "
                "dims: rotary pairs dims, so it must be an even whole number"
            )

    @property
    def rotary_dims(self) -> int:
        return int(self.rotary_fraction * self.attn_head_dim)

    @property
    def newton(self) -> bool:
        """Some layer is a nonlinear RNN trained by Newton iterations."""
        return any(name in ("paragru", "paralstm") for name in self.layer_mixers)

    def _validate_gdn(self) -> None:
        # The delta rule's Triton state walk tiles a key head in row blocks of up to 64 for
        # tensor-core products (16 wide at least); 256, the presets' largest, is compiled and tested.
        K, V = self.gdn_head_dim, self.gdn_expand_v * self.gdn_head_dim
        if K < 16 or K > 256 or K & (K - 1):
            raise ValueError(
                f"model.gdn_head_dim must be a power of two from 16 to 256 (the delta-rule kernels tile a whole "
                f"key head), got {K}"
            )
        if V != int(V):
            raise ValueError(f"model.gdn_expand_v * model.gdn_head_dim = {V:g} must be a whole number (value width)")

    @property
    def gdn_value_head_dim(self) -> int:
        return int(self.gdn_head_dim * self.gdn_expand_v)

    @property
    def key_dim(self) -> int:
        return int(self.d_model * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.d_model * self.expand_v)

    @property
    def ssd_inner(self) -> int:
        return self.ssd_expand * self.d_model

    @property
    def ssd_heads(self) -> int:
        return self.ssd_inner // self.ssd_head_dim

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.d_model * 2 / 3)
        return -(-hidden // 64) * 64


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message says which key and why."""


@dataclass
class SourceConfig:
    path: str = ""  # a corpus directory
    weight: float = 1.0  # share of the documents drawn, relative to the other sources'
    name: str = ""  # in metrics (default: the directory's name)


@dataclass
class DataConfig:
    path: str = "synthetic"  # a corpus directory, or "synthetic": the built-in language, generated on first use
    sources: list[SourceConfig] = field(default_factory=list)  # a mixture of corpora instead of `path`
    synthetic_docs: int = 20000
    cache_dir: str = "data"  # where the synthetic corpus is kept
    tokens_per_batch: int = 4096  # global batch: whole documents packed up to this many tokens
    eval_docs: int = 200  # held-out documents (the corpus' last ones) for the eval loss
    eval_batches: int = 4


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # the gradient norm is clipped to this (0: off)


@dataclass
class SequenceParallelConfig:
    size: int = 1  # ranks that share one packed stream (1: off)
    relay: str = "allgather"  # chain | allgather | logscan | auto: per step, the fastest by the scaling model
    relay_blocks: int = 1  # the chain relay's state in this many blocks of the value dim, hops pipelined
    overlap: bool = True  # relays in flight during the local scan (false: each finishes first)


@dataclass
class PlannerConfig:
    kind: str = "fixed"  # fixed: parallel.sp.size chains, even cuts | balanced: adaptive | concat: equal cuts, no relay
    ranks_per_node: int = 8  # chains prefer ranks of one node
    # A relay hop's cost: per message latency, and its bytes (the model's summaries, see
    # models/flops.py:relay_bytes_per_hop) over the link's bandwidth
    hop_latency_s: float = 10e-6
    intra_node_gb_per_s: float = 200.0  # NVLink class
    inter_node_gb_per_s: float = 25.0  # InfiniBand class


@dataclass
class ZeroConfig:
    engine: str = "none"  # none: replicated parameters, all-reduced gradients | fsdp2 | deepspeed
    stage: int = 3  # 1: optimizer state, 2: + gradients, 3: + parameters sharded (fsdp2: 2 or 3)


@dataclass
class ParallelConfig:
    sp: SequenceParallelConfig = field(default_factory=SequenceParallelConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)


@dataclass
class DistConfig:
    init_timeout_s: float = 120.0  # forming the process group and its pre-flight all-reduce
    timeout_s: float = 600.0  # any collective during training (a dead or hung rank)


@dataclass
class CheckpointConfig:
    every: int = 0  # save every this many steps, and at the end (0: never)
    keep: int = 3  # complete checkpoints kept (older ones are deleted)
    async_save: bool = False  # write shards in the background while training continues
    checksums: bool = True  # SHA-256 of every file in the manifest (ranks share the hashing), checked on load
    dir: str = ""  # default: <train.run_dir>/checkpoints


@dataclass
class ProfileConfig:
    enabled: bool = True  # per-rank step records and the cross-rank summary (RUN_DIR/profile)
    tensorboard: bool = False  # rank 0 also writes TensorBoard scalars to RUN_DIR/tensorboard
    peak_tflops: float = 0.0  # for MFU; 0: look the GPU up (unknown on CPU: no MFU)
    straggler_threshold: float = 1.25  # compute / predicted, relative to the median rank
    trace_ranks: list[int] = field(default_factory=list)  # torch.profiler traces for these ranks...
    trace_steps: list[int] = field(default_factory=list)  # ...over these steps (first to last)
    slow_rank: int = -1  # testing aid: this rank sleeps slow_seconds_per_ktoken per 1000 tokens
    slow_seconds_per_ktoken: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 300
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    kernels: str = "auto"  # auto (Triton on CUDA, PyTorch reference on CPU) | triton | torch
    activation_checkpoint: str = "none"  # none | full (recompute blocks) | mixer (recompute token mixers)
    micro_tokens: int = 0  # tokens per rank per block pass, a multiple of model.chunk_size (0: the whole piece)
    loss_chunk_tokens: int = 4096  # the head and loss run over chunks of this many tokens (0: all logits at once)
    compile: bool = False  # torch.compile each block (the scans stay custom ops); the first steps compile
    stop_at_step: int = 0  # end this run at this step (checkpointed), the schedule still for `steps`; 0: off
    deadline_margin_s: float = 120.0  # under `baton submit`: checkpoint and requeue this long before the time limit
    log_every: int = 10
    eval_every: int = 100
    run_dir: str = "runs/default"
    init_from: str = ""  # a baton model directory (baton import, baton export): start from its weights


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    resume: str = "none"  # none | auto (the newest complete checkpoint, if any) | a checkpoint directory


CHOICES = {
    "train.device": ("auto", "cpu", "cuda"),
    "train.dtype": ("auto", "fp32", "bf16"),
    "train.kernels": BACKENDS,
    "train.activation_checkpoint": POLICIES,
    "parallel.sp.relay": ("chain", "allgather", "logscan", "auto"),
    "parallel.planner.kind": ("fixed", "balanced", "concat"),
    "parallel.zero.engine": ENGINES,
    "parallel.zero.stage": (1, 2, 3),
}
# Numeric keys and the values they take: (lowest, highest, whether each end is allowed).
INF = float("inf")
RANGES = {
    "data.tokens_per_batch": (1, INF, True, True),
    "data.synthetic_docs": (1, INF, True, True),
    "data.eval_docs": (1, INF, True, True),
    "data.eval_batches": (1, INF, True, True),
    "optim.lr": (0, INF, False, True),
    "optim.min_lr_ratio": (0, 1, True, True),
    "optim.warmup_steps": (0, INF, True, True),
    "optim.weight_decay": (0, INF, True, True),
    "optim.beta1": (0, 1, True, False),
    "optim.beta2": (0, 1, True, False),
    "optim.grad_clip": (0, INF, True, True),
    "parallel.sp.size": (1, INF, True, True),
    "parallel.sp.relay_blocks": (1, 256, True, True),
    "parallel.planner.ranks_per_node": (1, INF, True, True),
    "parallel.planner.hop_latency_s": (0, INF, True, True),
    "parallel.planner.intra_node_gb_per_s": (0, INF, False, True),
    "parallel.planner.inter_node_gb_per_s": (0, INF, False, True),
    "dist.init_timeout_s": (0, INF, False, True),
    "dist.timeout_s": (0, INF, False, True),
    "checkpoint.every": (0, INF, True, True),
    "checkpoint.keep": (1, INF, True, True),
    "profile.peak_tflops": (0, INF, True, True),
    "profile.straggler_threshold": (1, INF, False, True),
    "profile.slow_seconds_per_ktoken": (0, INF, True, True),
    "train.steps": (1, INF, True, True),
    "train.stop_at_step": (0, INF, True, True),
    "train.deadline_margin_s": (0, INF, True, True),
    "train.log_every": (1, INF, True, True),
    "train.eval_every": (1, INF, True, True),
    "train.micro_tokens": (0, INF, True, True),
    "train.loss_chunk_tokens": (0, INF, True, True),
}


def range_text(low: float, high: float, low_in: bool, high_in: bool) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``: how an error message states a range."""
    if high == INF:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then ``key=value`` overrides; validated."""
    try:
        cfg = OmegaConf.structured(Config)
        if path is not None:
            cfg = OmegaConf.merge(cfg, _read_yaml(Path(path)))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        obj: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None
    validate(obj)
    return obj


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config sections (model:, train:, ...), got a list")
    return loaded


def _get(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}, got {_get(cfg, key)!r}")
    for key, (low, high, low_in, high_in) in RANGES.items():
        value = _get(cfg, key)
        if not ((low <= value if low_in else low < value) and (value <= high if high_in else value < high)):
            raise ConfigError(f"{key}: must be {range_text(low, high, low_in, high_in)}, got {value}")
    if cfg.parallel.zero.engine == "fsdp2" and cfg.parallel.zero.stage == 1:
        raise ConfigError(
            "parallel.zero.stage: fsdp2 shards parameters, gradients and optimizer state (stage 3, or 2 "
            "keeping parameters unsharded until backward); stage 1 needs parallel.zero.engine=deepspeed"
        )
    if cfg.checkpoint.async_save and cfg.parallel.zero.engine == "deepspeed":
        raise ConfigError(
            "checkpoint.async_save: background saves use torch.distributed.checkpoint (parallel.zero.engine "
            "none or fsdp2); DeepSpeed writes its checkpoints synchronously"
        )
    _validate_micro_batches(cfg)
    try:
        cfg.model.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate_micro_batches(cfg: Config) -> None:
    micro, chunk = cfg.train.micro_tokens, cfg.model.chunk_size
    if micro and micro % chunk:
        raise ConfigError(
            f"train.micro_tokens={micro} must be a multiple of model.chunk_size={chunk}: slices cut documents "
            f"at whole chunks (e.g. train.micro_tokens={max(chunk, micro // chunk * chunk)})"
        )
    if micro and cfg.model.newton:
        raise ConfigError(
            f"train.micro_tokens={micro} with model.mixer={cfg.model.describe}: slices carry a state by composing "
            "linear summaries, and a nonlinear RNN has none; use sequence parallelism or train.micro_tokens=0"
        )
    zero = cfg.parallel.zero
    if micro and zero.engine == "deepspeed" and zero.stage == 3:
        raise ConfigError(
            f"train.micro_tokens={micro} with DeepSpeed ZeRO stage 3: ZeRO-3 gathers a module's parameters "
            "at every call, and ranks with different numbers of slices would call different collectives; "
            "use parallel.zero.engine=fsdp2 (which gathers once per block) or parallel.zero.stage=2"
        )
    if micro and cfg.train.activation_checkpoint == "none":
        raise ConfigError(
            f"train.micro_tokens={micro} bounds memory by recomputing each slice in backward: it needs "
            "train.activation_checkpoint=full (or mixer)"
        )


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
