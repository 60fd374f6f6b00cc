"""The recurrent language model: embedding, N x (RMSNorm -> mixer -> RMSNorm -> SwiGLU), head.
Each layer's mixer is ``model.layer_pattern``'s (a hybrid: attention among recurrent layers)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from baton.config import ModelConfig
from baton.models.attention import GatedAttentionMixer
from baton.models.gdn import GatedDeltaNetMixer
from baton.models.gla import GLAMixer
from baton.models.loss import fused_head_loss, token_losses
from baton.models.mlp import SwiGLU
from baton.models.norm import RMSNorm
from baton.models.pararnn import ParaGRUMixer, ParaLSTMMixer
from baton.models.ssd import SSDMixer
from baton.models.state import LayerState

MIXERS = {
    "gla": GLAMixer, "ssd": SSDMixer, "gdn": GatedDeltaNetMixer, "paragru": ParaGRUMixer, "paralstm": ParaLSTMMixer,
    "attn": GatedAttentionMixer,
}  # fmt: skip

__all__ = ["Block", "LayerState", "RecurrentLM", "token_losses"]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: str) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = MIXERS[mixer](cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(
        self, x: Tensor, cu_seqlens: Tensor | None, state: LayerState | None = None
    ) -> tuple[Tensor, LayerState | None]:
        """With ``state`` the packed piece x continues a document (see the mixers), and the
        state after it is returned; without, None."""
        h, state = self.mixer(self.mixer_norm(x), cu_seqlens, state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state

    def step(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token for each of B streams: x [B, d], the mixer's state carried (decoding)."""
        h, state = self.mixer.step(self.mixer_norm(x), state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state


class RecurrentLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, mixer) for mixer in cfg.layer_mixers)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_linear)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # Scale residual-branch outputs down with depth (GPT-2 style).
        for block in self.blocks:
            for out in (block.mlp.down, getattr(block.mixer, block.mixer.relays.output)):
                nn.init.normal_(out.weight, std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def _init_linear(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: Tensor, cu_seqlens: Tensor | None = None, labels: Tensor | None = None, loss_chunk: int = 0
    ) -> Tensor:
        """input_ids: [B, T]; with ``cu_seqlens`` (B == 1) a packed stream of documents.

        Returns the logits [B, T, V]; or, given ``labels`` (-100: no target), the summed
        next-token cross-entropy, fused with the head over chunks of ``loss_chunk`` tokens
        (0: from the full logits). Under autocast the residual stream is kept in the autocast
        dtype, as it is under FSDP2's mixed precision.
        """
        x = self.embed(input_ids)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        for block in self.blocks:
            x, _ = block(x, cu_seqlens)
        if labels is None:
            return self.head(self.norm(x))
        if loss_chunk:
            return fused_head_loss(x, self.norm, self.head.weight, labels, loss_chunk)
        return token_losses(self.head(self.norm(x)), labels)[0]

    def prefill(self, input_ids: Tensor) -> tuple[Tensor, list[LayerState]]:
        """A prompt [1, T] through the chunked scans (and attention): the logits [V] after its
        last token and every layer's state after it (what decoding continues from)."""
        x = self.embed(input_ids)
        cu, states = torch.tensor([0, input_ids.shape[1]]), []
        for block in self.blocks:
            x, state = block(x, cu, LayerState())
            states.append(state._replace(transition=None))
        return self.head(self.norm(x[0, -1])), states

    def step(self, token_ids: Tensor, states: list[LayerState]) -> tuple[Tensor, list[LayerState]]:
        """One token for each of B streams [B]: the logits [B, V] after it and the states (a
        fixed size per recurrent layer whatever the length so far; attention's cache grows)."""
        x, new_states = self.embed(token_ids), []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state)
            new_states.append(state)
        return self.head(self.norm(x)), new_states
