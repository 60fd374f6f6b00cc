"""ParaGRU and ParaLSTM token mixers (ParaRNN, Danieli et al., arXiv 2510.21450): nonlinear RNNs
with diagonal recurrent weights, trained in parallel over the sequence by Newton's method
(``models/newton.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from baton.config import ModelConfig
from baton.models.mixer import RelayPoints
from baton.models.newton import Cell, WholeSequence, newton_recurrence
from baton.models.paragru import GRU
from baton.models.paralstm import LSTM
from baton.models.state import LayerState

_open_logs: list[list[Tensor]] = []


@contextlib.contextmanager
def residual_log() -> Iterator[list[Tensor]]:
    """The residuals of the Newton-trained layers' forwards inside the block, in the order they
    ran (layers with ``model.newton_residual``; a forward recomputed in backward, outside the
    block, adds none)."""
    log: list[Tensor] = []
    _open_logs.append(log)
    try:
        yield log
    finally:
        _open_logs.pop()


class ParaRNNMixer(nn.Module):
    """Per head: a block-diagonal input projection (each head reads its own ``d_model / H``
    slice of the input) to three pre-activations per unit, the cell's diagonal recurrent
    weights, the state solved by ``model.newton_iterations`` Newton steps in fp32; then a dense
    output projection mixing the heads. The output is the cell's h (ParaLSTM: h of [c, h]).

    ``self.solves`` runs Newton's linear solves; sequence parallelism swaps it for a relaying one.
    Under ``model.newton_residual`` each forward adds ``‖h − f(h)‖ / ‖h‖`` to the open
    :func:`residual_log`.
    """

    relays = RelayPoints(output="out_proj", solves="solves")

    def __init__(self, cfg: ModelConfig, cell: Cell) -> None:
        super().__init__()
        d, H = cfg.d_model, cfg.n_heads
        self.cell, self.n_heads, self.iterations = cell, H, cfg.newton_iterations
        self.check_residual = cfg.newton_residual
        head = d // H
        self.in_weight = nn.Parameter(torch.randn(H, head, 3, head) * head**-0.5)  # fan-in init: O(1) gates
        self.in_bias = nn.Parameter(torch.zeros(H, 3, head))
        self.recurrent = nn.Parameter(torch.rand(3, H, head) - 0.5)  # diagonal recurrent weights
        self.out_proj = nn.Linear(d, d, bias=False)
        self.solves = WholeSequence()

    def _pre_activations(self, x: Tensor) -> Tensor:
        """u [..., H, 3, D] in fp32 (Newton's iterations converge to fp32 round-off, not bf16's),
        tokens outermost (einsum's output is laid out head-major)."""
        heads = x.reshape(*x.shape[:-1], self.n_heads, -1).float()
        with torch.autocast(x.device.type, enabled=False):
            u = torch.einsum("...hi,higd->...hgd", heads, self.in_weight.float()) + self.in_bias.float()
        return u.contiguous()

    def _output(self, state: Tensor, dtype: torch.dtype) -> Tensor:
        h = state[..., 1] if self.cell.pair else state
        return self.out_proj(h.reshape(*h.shape[:-2], -1).to(dtype))

    def forward(
        self, x: Tensor, cu_seqlens: Tensor | None = None, state: LayerState | None = None, summary_only: bool = False
    ) -> tuple[Tensor | None, LayerState | None]:
        """x: [B, T, d] -> [B, T, d]. With ``state`` (a packed piece, B == 1) the piece's first
        document continues from it, and the state after the piece is returned too."""
        if summary_only:
            raise ValueError("a nonlinear RNN has no summary of a piece without its incoming state")
        u = self._pre_activations(x)
        params = tuple(self.recurrent.float().unbind(0))
        initial = None
        if state is not None and state.scan is not None:
            n_docs = 1 if cu_seqlens is None else len(cu_seqlens) - 1
            initial = state.scan.new_zeros(n_docs, *state.scan.shape)
            initial = initial.index_copy(0, torch.tensor([0]), state.scan[None])  # out of place: differentiable
        h, residual = newton_recurrence(
            self.cell, u, params, initial, cu_seqlens, self.iterations, self.solves, self.check_residual
        )
        if self.check_residual and _open_logs:
            _open_logs[-1].append(residual)
        after = None if state is None else LayerState(h[0, -1])
        return self._output(h, x.dtype), after

    def step(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token for each of B streams (decoding): x [B, d] -> [B, d], the state
        [B, H, D(, 2)] (None: zero) advanced by the cell."""
        u = self._pre_activations(x)
        params = tuple(self.recurrent.float().unbind(0))
        prev = state.scan if state.scan is not None else u.new_zeros(*u.shape[:2], *self.cell.state_shape(params)[1:])
        h = self.cell.step(prev, u, *params)
        return self._output(h, x.dtype), LayerState(h)


class ParaGRUMixer(ParaRNNMixer):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, GRU)


class ParaLSTMMixer(ParaRNNMixer):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, LSTM)
