"""ParaGRU and ParaLSTM solved by Newton iterations against the cell applied token after token.

fp32 at an initialisation-like scale (pre-activations ~ N(0, 1), diagonal recurrent weights in
[-0.5, 0.5]), packed documents with initial states (one document empty). Measured (GRU / LSTM):
after the default 3 iterations the states differ from the loop by 2.6e-6 / 1.7e-7 relative to
their largest (the asked bound 1e-5), round-off (1e-7) from then on; one iteration is 0.11 /
0.065 off, two 3e-3 / 2e-4. The gradients by implicit differentiation differ from autograd
through the loop by 4e-7 / 3.5e-7
(norm-relative; the asked bound 1e-5): the adjoint is exact at the solution, the rest is the
solution's own error.
"""

import pytest
import torch

from baton.models.newton import Cell, newton_recurrence, sequential_recurrence
from baton.models.paragru import GRU
from baton.models.paralstm import LSTM

H, D, T = 2, 8, 300
CU = torch.tensor([0, 110, 110, T])
CELLS = {"gru": GRU, "lstm": LSTM}


def problem(cell: Cell, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(1, T, H, 3, D, generator=gen).requires_grad_()
    params = tuple((torch.rand(H, D, generator=gen) - 0.5).requires_grad_() for _ in range(3))
    h0 = torch.randn(3, *cell.state_shape(params), generator=gen).requires_grad_()
    return u, params, h0


def rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", CELLS)
def test_newton_solution_equals_the_sequential_cell(name):
    cell = CELLS[name]
    u, params, h0 = problem(cell)
    reference = sequential_recurrence(cell, u, params, h0, CU)
    solved, _ = newton_recurrence(cell, u, params, h0, CU)  # the default: 3 iterations
    assert rel_max(solved, reference) < 1e-5


@pytest.mark.parametrize("name", CELLS)
def test_one_iteration_is_not_enough(name):
    cell = CELLS[name]
    u, params, h0 = problem(cell)
    reference = sequential_recurrence(cell, u, params, h0, CU)
    assert rel_max(newton_recurrence(cell, u, params, h0, CU, iterations=1)[0], reference) > 1e-2


@pytest.mark.parametrize("name", CELLS)
def test_implicit_gradients_equal_autograd_through_the_loop(name):
    cell = CELLS[name]
    u, params, h0 = problem(cell, 1)
    weights = torch.randn(1, T, *cell.state_shape(params), generator=torch.Generator().manual_seed(2))
    leaves = [u, h0, *params]
    reference = torch.autograd.grad((sequential_recurrence(cell, u, params, h0, CU) * weights).sum(), leaves)
    ours = torch.autograd.grad((newton_recurrence(cell, u, params, h0, CU)[0] * weights).sum(), leaves)
    for what, a, b in zip(["u", "h0", "w1", "w2", "w3"], ours, reference):
        assert ((a - b).norm() / b.norm()).item() < 1e-5, what


def test_residual_check_falls_with_the_iterations():
    u, params, h0 = problem(LSTM)
    residuals = [newton_recurrence(LSTM, u, params, h0, CU, iterations=k, check=True)[1].item() for k in (1, 2, 3)]
    assert residuals[0] > 10 * residuals[1] > 100 * residuals[2]


def test_a_cell_that_is_not_diagonal_is_refused():
    dense = Cell(GRU.step, lambda h, u, *p: torch.ones(*h.shape, h.shape[-1]))  # a D×D Jacobian per head
    u, params, _ = problem(GRU)
    with pytest.raises(ValueError, match=r"<lambda> returned a Jacobian of shape \(1, 300, 2, 8, 8\)"):
        newton_recurrence(dense, u, params)
    with pytest.raises(ValueError, match="model.newton_iterations must be >= 1, got 0"):
        newton_recurrence(GRU, u, params, iterations=0)
