"""The detector separates slow hardware from planned imbalance and from cost-model error."""

import numpy as np

from baton.profile.straggler import StragglerDetector


def window(tokens, per_token, steps=6, noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.tile(np.asarray(tokens, dtype=float), (steps, 1))
    compute = tokens * np.asarray(per_token) * (1 + noise * rng.standard_normal(tokens.shape))
    return list(range(steps)), compute, tokens


def test_slow_rank_flagged_but_not_a_rank_with_more_planned_work():
    # rank 0: 3x the tokens at normal speed; rank 2: normal load, 1.6x slower per token.
    steps, compute, tokens = window([3000, 1000, 1000, 1000], [1e-4, 1e-4, 1.6e-4, 1e-4])
    report = StragglerDetector().update(steps, compute, tokens)
    assert report.stragglers == [2]
    assert abs(report.ratios[0] - 1) < 0.1 and report.ratios[2] > 1.4
    assert report.tokens_per_s[2] < 0.7 * report.tokens_per_s[1]


def test_a_slow_step_on_every_rank_is_a_cost_model_error_not_a_straggler():
    detector = StragglerDetector()
    detector.update(*window([1000] * 4, [1e-4] * 4))
    steps, compute, tokens = window([1000] * 4, [1e-4] * 4, seed=1)
    compute[3] *= 2.0  # e.g. thermal throttling of the whole node, or a longer kernel path
    report = detector.update(steps, compute, tokens)
    assert report.stragglers == [] and report.cost_model_error_steps == [3]


def test_one_slow_step_is_not_persistent():
    steps, compute, tokens = window([1000] * 3, [1e-4] * 3)
    compute[0, 1] *= 3
    assert StragglerDetector().update(steps, compute, tokens).stragglers == []


def test_a_first_step_spent_compiling_does_not_skew_the_speeds():
    # The planner calibrates from these speeds; on a GPU the first step compiles and autotunes
    # the kernels, for minutes, and not for equally long on every rank.
    steps, compute, tokens = window([1000] * 3, [1e-4] * 3, noise=0.0)
    compute[0] *= [50.0, 5.0, 1.0]
    speeds = StragglerDetector().update(steps, compute, tokens).tokens_per_s
    assert max(speeds) / min(speeds) < 1.01
    assert abs(speeds[0] - 1e4) / 1e4 < 0.01


def test_a_rank_without_tokens_has_speed_zero():
    steps, compute, tokens = window([1000, 1000], [1e-4, 1e-4])
    tokens[:, 1], compute[:, 1] = 0, 0
    assert StragglerDetector().update(steps, compute, tokens).tokens_per_s[1] == 0
