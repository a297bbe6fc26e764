"""``degl compare``: train several methods (and seeds) on the same backbone and budget, then tabulate.

Each run gets its own directory ``<out>/<method>-seed<seed>``. Completed runs with the same
options are reused and stopped ones are resumed, so the command is idempotent and restartable.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from degl import checkpoint
from degl.config import INVOCATION_KEYS, METHODS, TrainConfig
from degl.errors import UserError
from degl.rundir import write_json
from degl.train import resume, train


def parse_list(text: str, *, what: str, cast=str) -> list:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise UserError(f"{what} needs at least one value")
    try:
        return [cast(item) for item in items]
    except ValueError:
        raise UserError(f"{what} must be a comma-separated list, got {text!r}") from None


def _same_run(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    keys = set(saved) | set(wanted)
    return all(saved.get(k) == wanted.get(k) for k in keys - INVOCATION_KEYS)


def run_one(cfg: TrainConfig) -> dict[str, Any]:
    run_dir = Path(cfg.out)  # type: ignore[arg-type]
    if checkpoint.latest_checkpoint(run_dir) is None:
        return train(cfg)[0]
    _, meta = checkpoint.load_meta(run_dir)
    wanted = cfg.to_dict()
    if not _same_run(meta["config"], {**wanted, "max_steps": None}):
        raise UserError(f"{run_dir} holds a run with other options; remove it or choose another --out")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("completed"):
            print(f"degl: reusing the completed run in {run_dir}", file=sys.stderr)
            return summary
    overrides = {k: wanted[k] for k in ("max_steps", "threads", "progress", "device")}
    return resume(run_dir, overrides)[0]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(base: TrainConfig, methods: list[str], seeds: list[int], out: Path) -> dict[str, Any]:
    for method in methods:
        if method not in METHODS:
            raise UserError(f"unknown method {method!r} in --methods; choose from {', '.join(METHODS)}")
    summaries: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in seeds:
        for method in methods:
            cfg = replace(base, method=method, seed=seed, out=str(out / f"{method}-seed{seed}"))
            summaries[method].append(run_one(cfg))
    table: dict[str, Any] = {}
    for method, runs in summaries.items():
        finals = [r["test_acc"] for r in runs]
        per_stage = [statistics.fmean(values) for values in zip(*(r["test_acc_per_stage"] for r in runs))]
        mean, std = _mean_std(finals)
        table[method] = {
            "stages": runs[0]["stages"],
            "epochs_completed": runs[0]["epochs_completed"],
            "test_acc": finals,
            "test_acc_mean": round(mean, 3),
            "test_acc_std": round(std, 3),
            "test_acc_per_stage_mean": [round(v, 3) for v in per_stage],
            "train_time_s_mean": round(statistics.fmean(r["train_time_s"] for r in runs), 1),
            "completed": all(r["completed"] for r in runs),
        }
    result = {
        "dataset": base.dataset,
        "model": base.model,
        "width": base.width,
        "epochs": base.epochs,
        "stages": base.stages,
        "aux": base.aux,
        "seeds": seeds,
        "methods": table,
    }
    write_json(out / "comparison.json", result)
    return result


def format_table(result: dict[str, Any]) -> list[str]:
    seeds = result["seeds"]
    lines = [
        f"{result['dataset']}, {result['model']} width {result['width']}, {result['epochs']} epoch(s)"
        f" (per stage for sgl), seeds {','.join(map(str, seeds))}",
        f"{'method':<9} {'K':>2} {'final test acc %':>18}  {'per-stage test acc %':<32} {'train s':>8}",
    ]
    for method, row in result["methods"].items():
        final = f"{row['test_acc_mean']:.2f}" + (f" ± {row['test_acc_std']:.2f}" if len(seeds) > 1 else "")
        stages = " ".join(f"{v:.2f}" for v in row["test_acc_per_stage_mean"]) if row["stages"] > 1 else "-"
        lines.append(f"{method:<9} {row['stages']:>2} {final:>18}  {stages:<32} {row['train_time_s_mean']:>8.1f}")
    return lines
