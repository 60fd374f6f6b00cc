"""The summary and correction ops reproduce a scan split in two at any point."""

import pytest

from baton.kernels import naive_recurrence
from baton.kernels.relay_ref import add_state_correction_ref, segment_summary_ref
from tests.helpers import random_inputs, rel


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("cut", [1, 33, 79])
def test_split_scan_equals_whole(gate, cut):
    q, k, v, g = (x.detach() for x in random_inputs(gate, 80, seed=cut))
    o_ref, s_ref = naive_recurrence(q, k, v, g)
    first = [x[:, :cut] for x in (q, k, v, g)]
    second = [x[:, cut:] for x in (q, k, v, g)]
    log_A, S = segment_summary_ref(first[1], first[2], first[3], 0)
    o2, s2 = naive_recurrence(*second)  # zero start
    o2 = add_state_correction_ref(o2, second[0], second[3], S, 80 - cut, 8**-0.5)
    A = log_A.exp()[..., None]
    assert rel(o2, o_ref[:, cut:]) < 1e-12
    # Composition: the final state is A2 * S1 + S2.
    log_A2, S2 = segment_summary_ref(second[1], second[2], second[3], 0)
    assert rel(log_A2.exp()[..., None] * S + S2, s_ref[0]) < 1e-12
    assert rel(S2, s2[0]) < 1e-12 and A.shape[0] == 2


def test_summary_keeps_precision_far_into_a_long_segment():
    # 4096 tokens at a log gate of -30 on average: the cumulative gate reaches -1.2e5, where an
    # fp32 ulp is ~0.008, so b_L - b_t taken as a difference of prefix sums is off by up to that
    # much for the tokens that matter (the last ones); that version is 2e-5 from fp64 here.
    # Summed from the end, fp32 is 4e-8 from fp64.
    q, k, v, g = (x.detach() for x in random_inputs("gla", 4096, decay=60.0, seed=4))
    _, S64 = segment_summary_ref(k, v, g, 0)
    _, S32 = segment_summary_ref(k.float(), v.float(), g.float(), 0)
    assert rel(S32.double(), S64) < 1e-6
