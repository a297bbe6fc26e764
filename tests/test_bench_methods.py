"""``degl bench pipeline --method`` and ``degl bench memory --method``: every method side by side."""

import json

import pytest

from degl.cli import main

TINY = ["--model", "cnn4", "--width", "0.125", "--stages", "2", "--input-shape", "1,12,12", "--num-classes", "4"]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.distributed
def test_pipeline_bench_runs_every_methods_rank_loop_side_by_side(capsys):
    args = [*TINY, "--batch-size", "8", "--threads", "1", "--steps", "2", "--warmup", "1", "--cuts", "2"]
    assert main(["bench", "pipeline", *args, "--method", "dgl,dni,ddg,fr"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["methods"] == ["dgl", "dni", "ddg", "fr"] and result["workers"] == 2
    for name in result["methods"]:
        figures = result["per_method"][name]
        assert figures["pipeline_samples_per_s"] > 0 and figures["single_all_threads_samples_per_s"] > 0
        assert figures["single_samples_per_s"] > 0 and figures["speedup_vs_all_threads"] > 0
        assert len(figures["idle_fraction"]) == 2 and len(figures["busy_ms_per_step"]) == 2
        assert any(line.startswith(f"{name} ") for line in out.splitlines())  # one row of the table each
    assert "pippy_gpipe_samples_per_s" not in result  # the pipelined-backprop baselines run for dgl alone


BAD = [
    (["--method", "dni", "--codec", "int8"], "--codec int8 applies to --method dgl run alone"),
    (["--method", "dgl,ddg", "--link-mbps", "10"], "--link-mbps 10 applies to --method dgl run alone"),
    (["--method", "dgl,fr", "--microbatches", "2"], "--microbatches 2 applies to --method dgl run alone"),
    (["--method", "ddg,fr", "--aux", "cnn"], "--aux cnn applies to --method dgl"),
    (["--method", "dgl,magic"], "unknown method 'magic'"),
    (["--method", "dni,dni"], "--method names dni twice"),
    (["--method", "backprop"], "unknown method 'backprop'"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_pipeline_bench_refuses_what_a_method_would_ignore(capsys, args, message):
    assert main(["bench", "pipeline", *TINY, "--batch-size", "4", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("degl: error: ") and message in lines[0], lines


def test_memory_bench_refuses_aux_without_dgl(capsys):
    assert main(["bench", "memory", *TINY, "--batch-size", "4", "--method", "dni", "--aux", "cnn"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("degl: error: --aux cnn applies to --method dgl"), lines


def test_memory_bench_shows_what_each_method_keeps_between_steps(capsys):
    assert main(["bench", "memory", *TINY, "--batch-size", "4", "--method", "dgl,dni,ddg,fr"]) == 0
    result = last_json(capsys)
    stage0 = {name: figures[0] for name, figures in result["per_method"].items()}
    # DDG keeps 2(K-1) forward graphs with their weight snapshots at stage 0; FR only the inputs.
    assert stage0["ddg"]["kept_batches"] == stage0["fr"]["kept_batches"] == 2
    assert stage0["ddg"]["kept_bytes"] > stage0["fr"]["kept_bytes"] > 0
    assert stage0["ddg"]["snapshot_bytes"] > 0 and stage0["fr"]["snapshot_bytes"] == 0
    assert stage0["fr"]["kept_bytes"] == 2 * 4 * 1 * 12 * 12 * 4  # two float32 input batches, exactly
    assert stage0["ddg"]["peak_bytes"] > stage0["ddg"]["kept_bytes"]  # a third graph while the step runs
    # DNI keeps 2 outputs and a synthesizer; DGL nothing but its aux head.
    assert stage0["dni"]["kept_batches"] == 2 and stage0["dni"]["own_bytes"] > 0
    assert stage0["dgl"]["kept_bytes"] == 0 and stage0["dgl"]["own_bytes"] > 0
    assert stage0["ddg"]["own_bytes"] == stage0["fr"]["own_bytes"] == 0
    for figures in result["per_method"].values():  # the last stage backpropagates its loss at once
        assert figures[-1]["kept_bytes"] == 0 and figures[-1]["state_bytes"] > 0


def test_memory_bench_delays_grow_with_the_distance_to_the_loss(capsys):
    args = ["--model", "cnn4", "--width", "0.125", "--stages", "3", "--input-shape", "1,12,12", "--batch-size", "2"]
    assert main(["bench", "memory", *args, "--method", "ddg"]) == 0
    figures = last_json(capsys)["per_method"]["ddg"]
    assert [s["kept_batches"] for s in figures] == [4, 2, 0]  # 2(K-1-k)


def test_bench_help_names_the_methods(capsys):
    for kind in ("pipeline", "memory"):
        assert main(["bench", kind, "--help"]) == 0
        assert "dgl, dni, cdni, ddg, fr" in " ".join(capsys.readouterr().out.split())
