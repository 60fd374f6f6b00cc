# The two commands: `make train` (set up, then run the default job) and `make test-all` (every
# test, what CI runs); `make test` is the fast tier (no multi-process, end-to-end, SLURM or
# Triton-interpreter tests: see the markers in pyproject.toml).
.PHONY: train test test-all bench

train:
	@scripts/setup-env.sh
	.venv/bin/baton train $(ARGS)

test:
	@scripts/setup-env.sh dev
	.venv/bin/ruff check baton tests bench
	OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q --durations=10 -m "not (ranks or runs or slurm or interpret)" $(ARGS)

test-all:
	@scripts/setup-env.sh dev
	.venv/bin/ruff check baton tests bench
	OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q --durations=15 $(ARGS)

bench:
	@scripts/setup-env.sh dev
	.venv/bin/python bench/scan_ref.py
	.venv/bin/python bench/sp_relay.py
	.venv/bin/python bench/sp_overlap.py --tokens-per-rank 1024 --steps 7
	.venv/bin/python bench/sp_scaling.py
	.venv/bin/python bench/planner_sim.py
	.venv/bin/python bench/profile_overhead.py
	.venv/bin/python bench/checkpoint_io.py
	.venv/bin/python bench/memory.py
	.venv/bin/python bench/generate.py
	.venv/bin/python bench/data_build.py
	.venv/bin/python bench/state_tracking.py
