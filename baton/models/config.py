"""Model shape: a plain dataclass, also the ``model`` section of the training config."""

from __future__ import annotations

from dataclasses import dataclass

MIXER_NAMES = ("gla", "ssd", "gdn", "paragru", "paralstm")


@dataclass
class ModelConfig:
    vocab_size: int = 257
    d_model: int = 128
    n_layers: int = 2
    mixer: str = "gla"  # gla | ssd | gdn | paragru | paralstm
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
    mlp_ratio: float = 4.0  # SwiGLU hidden = mlp_ratio * 2/3 * d_model, rounded up to 64
    tie_embeddings: bool = True
    chunk_size: int = 64
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def validate(self) -> None:
        """Raise ValueError naming the ``model.*`` key that is out of range."""
        if self.mixer not in MIXER_NAMES:
            raise ValueError(f"model.mixer must be one of {', '.join(MIXER_NAMES)}, got {self.mixer!r}")
        for name in (
            "vocab_size", "d_model", "n_layers", "n_heads", "chunk_size", "conv_size",
            "gate_low_rank", "ssd_expand", "ssd_head_dim", "ssd_state_dim", "gdn_head_dim",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("expand_k", "expand_v", "gdn_expand_v", "gate_normalizer", "mlp_ratio", "norm_eps", "init_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.mixer == "gla":
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

    @property
    def newton(self) -> bool:
        """A nonlinear RNN trained by Newton iterations."""
        return self.mixer in ("paragru", "paralstm")

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
