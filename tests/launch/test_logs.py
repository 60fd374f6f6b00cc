"""Run-directory records: what a run starting at step N keeps of an earlier attempt's."""

import json

from baton.launch.logs import drop_records_after


def write_lines(path, records, torn: str = ""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def test_records_after_the_start_step_and_torn_lines_are_dropped(tmp_path):
    steps = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)]
    write_lines(tmp_path / "metrics.jsonl", steps, torn='{"step": 8, "lo')  # killed mid-write
    write_lines(tmp_path / "profile" / "rank1.jsonl", steps)
    write_lines(tmp_path / "profile" / "summary.jsonl", [{"steps": [1, 4]}, {"steps": [5, 7]}])
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 7}, indent=2))

    assert drop_records_after(tmp_path, 4) == 4 + 3 + 1  # metrics (with the torn line), rank 1, summaries
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == steps[:4]
    rank1 = (tmp_path / "profile" / "rank1.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rank1] == [1, 2, 3, 4]
    assert (tmp_path / "profile" / "summary.jsonl").read_text() == json.dumps({"steps": [1, 4]}) + "\n"
    assert not (tmp_path / "summary.json").exists()  # of a finish that is being retrained


def test_a_run_that_starts_where_the_records_end_keeps_them(tmp_path):
    write_lines(tmp_path / "metrics.jsonl", [{"step": s} for s in (1, 2, 3)])
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 3}))
    before = (tmp_path / "metrics.jsonl").read_text()
    assert drop_records_after(tmp_path, 3) == 0
    assert (tmp_path / "metrics.jsonl").read_text() == before and (tmp_path / "summary.json").exists()
    assert drop_records_after(tmp_path / "fresh", 0) == 0  # nothing there yet
