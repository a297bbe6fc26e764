"""``degl bench pipeline --method M,N,...``: every method's pipeline throughput side by side.

For each method, at the same K, cut, batch and threads per process:

    pipeline   K processes x T threads running that method's real rank loop (dgl: SyncRank;
               dni, cdni, ddg, fr: GradientRank with gradients sent back), samples/s of the last rank
    1 x K.T    one process with the K.T threads of the pipeline (equal cores): the method's own
               single-process trainer (build_method + train_step)
    1 x T      one process with one rank's threads (the pipeline efficiency, limit K)

Per round the methods run one after another in the same K processes (and in the same single
processes), in an order rotated every round; each figure is the median over rounds of the median
step time after the warm-up, and each ratio is taken per round (configurations measured side by
side) before its median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import torch

from degl.bench import AUX_RULE, BenchSituation, refuse_ignored_options
from degl.bench.method_ranks import run_methods_mode
from degl.run.config import Rule
from degl.runtime.launch import launch

DEFAULT_MICROBATCHES = "1,2,4,8"


ALONE = "applies to --method dgl run alone"
RULES: tuple[Rule[BenchSituation], ...] = (
    Rule(("codec",), lambda s: s.methods == ["dgl"], f"{ALONE} (dni, cdni, ddg and fr send exact tensors)"),
    Rule(
        ("link_mbps",),
        lambda s: s.methods == ["dgl"],
        f"{ALONE} (the side-by-side table of several methods reports no link figures)",
        show=lambda mbps: f"{mbps:g}",
    ),
    Rule(
        ("microbatches",),
        lambda s: s.methods == ["dgl"],
        f"{ALONE} (the pipelined-backprop baselines run only then)",
    ),
    AUX_RULE,
)
"""When the options of ``degl bench pipeline`` apply, checked in this order."""


def refuse_inapplicable(args: argparse.Namespace, methods: list[str]) -> None:
    """The options that apply only to ``--method dgl`` run alone (or to dgl), refused in one line."""
    refuse_ignored_options(args, methods, RULES, {"link_mbps": None, "microbatches": DEFAULT_MICROBATCHES})


def spawn(mode: str, spec: dict[str, Any], world: int) -> list[dict[str, dict[str, Any]]]:
    """Every method of ``spec["methods"]`` in ``world`` fresh processes: each rank's results by method."""
    return launch(
        run_methods_mode, world, (mode, spec), threads=spec["threads"], pin_cpus=spec["pin_cpus"], timeout_s=600
    )


def _median(values: list[float], digits: int = 4) -> float:
    return round(statistics.median(values), digits)


def run_methods(args: argparse.Namespace, methods: list[str], spec: dict[str, Any], workers: int, headline: str) -> int:
    threads, batch = spec["threads"], spec["batch_size"]
    keys = ("pipeline", "single", "single_all", "equal_cores", "efficiency")
    figures: dict[str, dict[str, list[Any]]] = {m: {k: [] for k in (*keys, "idle", "busy", "waits")} for m in methods}
    for r in range(args.rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        ranks = spawn("ranks", {**spec, "methods": order}, workers)
        single = spawn("single", {**spec, "methods": order}, 1)[0]
        single_all = spawn("single", {**spec, "methods": order, "threads": threads * workers}, 1)[0]
        for m in methods:
            f = figures[m]
            f["pipeline"].append(batch / ranks[-1][m]["median_step_s"])
            f["single"].append(batch / single[m]["median_step_s"])
            f["single_all"].append(batch / single_all[m]["median_step_s"])
            f["equal_cores"].append(f["pipeline"][-1] / f["single_all"][-1])
            f["efficiency"].append(f["pipeline"][-1] / f["single"][-1])
            f["idle"].append([rank[m]["idle_fraction"] for rank in ranks])
            f["busy"].append([1000 * rank[m]["busy_s_per_step"] for rank in ranks])
            f["waits"].append([(rank[m]["recv_wait_fraction"], rank[m]["send_wait_fraction"]) for rank in ranks])
    per_method: dict[str, dict[str, Any]] = {}
    for m in methods:
        f = figures[m]
        per_method[m] = {
            "pipeline_samples_per_s": _median(f["pipeline"], 2),
            "single_all_threads_samples_per_s": _median(f["single_all"], 2),
            "single_samples_per_s": _median(f["single"], 2),
            "speedup_vs_all_threads": _median(f["equal_cores"]),
            "speedup_vs_all_threads_per_round": [round(v, 4) for v in f["equal_cores"]],
            "speedup": _median(f["efficiency"]),
            "idle_fraction": [_median(col) for col in zip(*f["idle"])],
            "recv_wait_fraction": [_median([w[0] for w in col]) for col in zip(*f["waits"])],
            "send_wait_fraction": [_median([w[1] for w in col]) for col in zip(*f["waits"])],
            "busy_ms_per_step": [_median(col, 3) for col in zip(*f["busy"])],
        }
    k_t, kt = f"{workers} x {threads}", threads * workers
    lines = [
        headline,
        f"methods {', '.join(methods)}: each in the same processes, one after another, order rotated every round"
        if len(methods) > 1
        else f"method {methods[0]}",
        f"{'method':<7}{'pipeline ' + k_t:>16}{'1 x ' + str(kt) + ' thr':>13}{'ratio':>8}"
        f"{'1 x ' + str(threads) + ' thr':>13}{'ratio':>8}   idle per rank; busy ms/step per rank",
    ]
    for m, r in per_method.items():
        lines.append(
            f"{m:<7}{r['pipeline_samples_per_s']:>16.1f}{r['single_all_threads_samples_per_s']:>13.1f}"
            f"{r['speedup_vs_all_threads']:>8.3f}{r['single_samples_per_s']:>13.1f}{r['speedup']:>8.3f}   "
            + ", ".join(f"{v:.1%}" for v in r["idle_fraction"])
            + "; "
            + ", ".join(f"{v:.1f}" for v in r["busy_ms_per_step"])
        )
    lines.append(
        f"samples/s, median of {args.rounds} round(s); ratio = pipeline / one process, per round then median: "
        f"at equal cores (1 x {kt}) and against one rank's threads (1 x {threads}, limit {workers})"
    )
    if args.rounds > 1:
        lines.append(
            "equal-cores ratio spread over rounds: "
            + ", ".join(f"{m} {max(r) - min(r):.3f}" for m, r in ((m, figures[m]["equal_cores"]) for m in methods))
        )
    result = {
        "methods": methods,
        "model": args.model,
        "width": args.width,
        "stages": args.stages,
        "workers": workers,
        "cuts": spec["cuts"],
        "split": args.split,
        "aux": args.aux,
        "batch_size": batch,
        "input_shape": spec["input_shape"],
        "threads_per_process": threads,
        "pin_cpus": args.pin_cpus,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "max_in_flight": args.max_in_flight,
        "per_method": per_method,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    for line in lines:
        print(line)
    print(json.dumps(result))
    return 0
