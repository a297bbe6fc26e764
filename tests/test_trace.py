"""``degl train --trace`` (a pipeline's timeline), ``degl trace summary`` and the pipeline's progress bar."""

import json
import multiprocessing
import subprocess
import sys

import pytest

from conftest import REPO, SYNTH, run_degl
from degl.runtime.control import ProgressBoard, progress_note

TWO = [*SYNTH, "--workers", "2", "--threads", "1", "--batch-size", "16"]  # 16 steps per epoch


def spans(trace, rank, name):
    return sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in trace["traceEvents"]
        if e["ph"] == "X" and e["pid"] == rank and e["name"] == name
    )


def summarize(path):
    done = run_degl("trace", "summary", str(path))
    assert done.returncode == 0, done.stderr
    return {row["rank"]: row for row in json.loads(done.stdout.strip().splitlines()[-1])["ranks"]}


def assert_agrees_with_summary(rows, summary, *, key="last_window"):
    """The trace's fractions and summary.json's measure the same thing (the last epoch's training)."""
    for rank in (0, 1):
        row = rows[rank][key]
        assert row["idle"] == pytest.approx(summary["idle_fraction_per_stage"][rank], abs=0.05)
        assert row["recv_wait"] == pytest.approx(summary["recv_wait_fraction_per_stage"][rank], abs=0.05)
        assert row["send_wait"] == pytest.approx(summary["send_wait_fraction_per_stage"][rank], abs=0.05)


@pytest.mark.distributed
def test_a_two_rank_trace_has_both_ranks_on_one_clock_and_agrees_with_the_summary(tmp_path):
    out = tmp_path / "run"
    done = run_degl("train", *TWO, "--epochs", "2", "--trace", "--progress", "--out", str(out))
    assert done.returncode == 0, done.stderr
    # The epoch bar names the last epoch's slowest rank (its final state is always printed; the step
    # bar's postfix, from the shared board, shows only when tqdm happens to refresh).
    assert "last epoch: slowest rank" in done.stderr
    trace = json.loads((out / "trace.json").read_text())
    assert {e["pid"] for e in trace["traceEvents"] if e["ph"] == "X"} == {0, 1}
    for rank in (0, 1):
        assert len(spans(trace, rank, "compute")) == 32 and len(spans(trace, rank, "train")) == 2
        assert len(spans(trace, rank, "forward")) == 32 and spans(trace, rank, "eval")
    assert spans(trace, 0, "data") and spans(trace, 1, "recv wait")
    # One clock: rank 1 trains on step i only after rank 0 has computed it. The slack allows for the
    # ranks leaving the barrier at slightly different times (more on a loaded machine); times from
    # unaligned origins are off by the ranks' start-up difference, typically far more.
    for (_, end0), (start1, _) in zip(spans(trace, 0, "compute"), spans(trace, 1, "compute")):
        assert start1 > end0 - 20_000
    summary = json.loads((out / "summary.json").read_text())
    rows = summarize(out / "trace.json")
    assert rows[0]["windows"] == 2 and rows[0]["steps"] == 32
    assert_agrees_with_summary(rows, summary)
    image = tmp_path / "timeline.png"
    drawn = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render_trace.py"), str(out / "trace.json"), str(image)],
        capture_output=True,
        text=True,
    )
    assert drawn.returncode == 0, drawn.stderr
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.distributed
def test_an_async_trace_has_both_ranks_and_agrees_with_the_summary(tmp_path):
    out = tmp_path / "run"
    done = run_degl("train", *TWO, "--method", "async-dgl", "--buffer", "2", "--trace", "--out", str(out))
    assert done.returncode == 0, done.stderr
    trace = json.loads((out / "trace.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for rank in (0, 1):
        assert len(spans(trace, rank, "compute")) == summary["steps_per_stage"][rank]
    rows = summarize(out / "trace.json")
    for rank in (0, 1):  # one window: the whole asynchronous run
        assert rows[rank]["idle"] == pytest.approx(summary["idle_fraction_per_stage"][rank], abs=0.05)


def test_trace_summary_of_a_file_that_is_no_trace_is_one_line_and_status_2(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"method": "dgl"}))
    (tmp_path / "broken.json").write_text("{not json")
    for path in (tmp_path / "summary.json", tmp_path / "broken.json", tmp_path / "missing.json"):
        done = run_degl("trace", "summary", str(path))
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith("degl: error: ") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("where", [[], ["--workers", "1"]], ids=["one-process", "workers-1"])
def test_trace_where_there_is_no_pipeline_is_refused(tmp_path, where):
    done = run_degl("train", *SYNTH, *where, "--trace", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "--trace applies to multi-process runs" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def _publish(board):
    board.publish(1, 40, 3.5, 10.0)


def test_the_progress_board_is_shared_with_forked_ranks_and_names_the_slowest():
    board = ProgressBoard(2)
    board.publish(0, 10, 1.0, 2.0)
    child = multiprocessing.get_context("fork").Process(target=_publish, args=(board,))
    child.start()
    child.join()
    assert board.read()[1] == (40.0, 3.5, 10.0)  # written by the other process
    board.rates()  # the first reading: rates since the next one
    board.publish(0, 20, 1.5, 3.0)  # 50% busy
    board.publish(1, 50, 4.4, 11.0)  # 90% busy: the one holding the synchronous pipeline back
    assert progress_note(1000, board, lockstep=True) == "1000 samples/s, slowest rank 1 (90% busy)"
    board.publish(0, 30, 2.0, 4.0)  # 10 steps/s
    board.publish(1, 55, 4.9, 12.0)  # 5 steps/s
    assert (
        progress_note(1000, board, lockstep=False)
        == "1000 samples/s, steps per rank 30/55, slowest rank 1 (5.0 steps/s)"
    )
