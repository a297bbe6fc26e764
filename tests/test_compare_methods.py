"""``degl compare`` with the paper's alternatives: ``--methods dgl,dni,cdni,backprop`` (the DNI
comparison) and ``--methods dgl,ddg,fr,backprop`` (the DDG comparison) run, reuse the runs they
share, and tabulate every method with the accuracy of its last stage (the only one dni, cdni, ddg
and fr score)."""

from __future__ import annotations

import json

from degl.cli import main

K = 3
TINY = [
    "--dataset", "synthetic",
    "--input-shape", "1,28,28",  # dni-cnn's three stride-3 pools: 28 -> 9 -> 3 -> 1
    "--synthetic-size", "64",
    "--num-classes", "4",
    "--model", "dni-cnn",
    "--width", "0.125",
    "--stages", str(K),
    "--epochs", "1",
    "--batch-size", "16",  # 4 steps: more than ddg's delay 2(K-1) = 4 at stage 0, settled at the epoch's end
    "--threads", "1",
    "--no-progress",
]  # fmt: skip


def compare(methods: str, out, capsys, *extra: str) -> tuple[dict, list[str], str]:
    assert main(["compare", *TINY, "--methods", methods, "--out", str(out), *extra]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return json.loads(lines[-1]), lines[:-1], captured.err


def check_rows(result: dict, methods: list[str], table: list[str]) -> None:
    assert list(result["methods"]) == methods
    for method in methods:
        row = result["methods"][method]
        assert row["completed"] and row["epochs_completed"] == 1
        accs = row["test_acc_per_stage_mean"]
        assert 0.0 <= row["test_acc_mean"] <= 100.0
        if method == "backprop":
            assert row["stages"] == 1 and row["scored_stages"] == [0]
        elif method == "dgl":
            assert row["stages"] == K and row["scored_stages"] == list(range(K)) and len(accs) == K
        else:  # the last stage only: its head is the only one trained
            assert row["stages"] == K and row["scored_stages"] == [K - 1] and len(accs) == 1
        assert accs[-1] == row["test_acc_mean"]  # the final accuracy is the last stage's
        line = next(line for line in table if line.split()[:1] == [method])
        if method in ("dni", "cdni", "ddg", "fr"):  # unscored stages shown as '-', the last one's number
            assert f"{' '.join(['-'] * (K - 1))} {accs[-1]:.2f}" in line
    if any(m not in ("dgl", "backprop") for m in methods):
        assert any("only the last stage's head is trained and scored" in line for line in table)


def test_compare_dni_then_ddg_comparisons_share_their_dgl_and_backprop_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    dni, table, _ = compare("dgl,dni,cdni,backprop", out, capsys)
    check_rows(dni, ["dgl", "dni", "cdni", "backprop"], table)
    for method in ("dni", "cdni"):  # each trained as itself: its summary says so
        summary = json.loads((out / f"{method}-seed0" / "summary.json").read_text())
        assert summary["method"] == method and summary["test_acc_per_stage"] == [summary["test_acc"]]

    # The DDG comparison in the same directory, two runs at a time in child processes (each
    # method needs a cost to be ordered by): dgl and backprop are reused, ddg and fr trained.
    ddg, table, err = compare("dgl,ddg,fr,backprop", out, capsys, "--parallel", "2")
    check_rows(ddg, ["dgl", "ddg", "fr", "backprop"], table)
    assert err.count("reusing the completed run") == 2
    for method in ("dgl", "backprop"):
        assert ddg["methods"][method] == dni["methods"][method]
    for method in ("ddg", "fr"):
        assert json.loads((out / f"{method}-seed0" / "summary.json").read_text())["method"] == method
