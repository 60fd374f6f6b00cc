"""Process-group setup fails fast and clearly on a bad rendezvous address."""

import os
import subprocess
import sys
import time


def test_unresolvable_master_address_is_a_clear_error_within_seconds(tmp_path):
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="no-such-host.invalid",
               MASTER_PORT="29511", OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "baton.launch.cli", "train", f"data.cache_dir={tmp_path}",
                           "data.synthetic_docs=200", "data.eval_docs=20", f"train.run_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    assert "MASTER_ADDR='no-such-host.invalid'" in proc.stderr and "does not resolve" in proc.stderr
    assert "Traceback" not in proc.stderr
