"""The recurrent language model: embedding, N x (RMSNorm -> mixer -> RMSNorm -> SwiGLU), head."""

from __future__ import annotations

from torch import Tensor, nn

from baton.models.config import ModelConfig
from baton.models.gla import GLAMixer
from baton.models.mlp import SwiGLU
from baton.models.ssd import SSDMixer

MIXERS = {"gla": GLAMixer, "ssd": SSDMixer}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = MIXERS[cfg.mixer](cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(self, x: Tensor, cu_seqlens: Tensor | None) -> Tensor:
        x = x + self.mixer(self.mixer_norm(x), cu_seqlens)
        return x + self.mlp(self.mlp_norm(x))


class RecurrentLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_linear)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # Scale residual-branch outputs down with depth (GPT-2 style).
        for block in self.blocks:
            for out in (block.mlp.down, getattr(block.mixer, "o_proj", None), getattr(block.mixer, "out_proj", None)):
                if out is not None:
                    nn.init.normal_(out.weight, std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def _init_linear(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """input_ids: [B, T]; with ``cu_seqlens`` (B == 1) a packed stream of documents."""
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cu_seqlens)
        return self.head(self.norm(x))


def token_losses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy (fp32) over labels != -100, and the count of such labels."""
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, (labels != -100).sum()
