"""``degl bench pipeline``: samples/s of the DGL pipeline against one process and against
pipeline-parallel backprop (``torch.distributed.pipelining`` GPipe and 1F1B), side by side.

Every configuration runs in fresh processes with the same backbone, cut, batch and thread budget;
rounds are interleaved and each figure is the median over rounds of the median step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import torch

from degl.bench import add_common_options
from degl.bench.pipeline_ranks import run_mode
from degl.core.split import build_stages
from degl.errors import UserError
from degl.models import build_model
from degl.run.config import parse_cuts, parse_shape
from degl.runtime.dist import default_threads
from degl.runtime.launch import launch


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("pipeline", help="samples/s: dgl pipeline vs one process vs pipelined backprop")
    add_common_options(parser)
    parser.set_defaults(split="time")
    parser.add_argument("--workers", type=int, default=None, help="processes, one stage each (default: --stages)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (default: 1)")
    parser.add_argument(
        "--microbatches",
        default="1,2,4,8",
        help="microbatch counts tried for GPipe/1F1B; the best is reported (default: 1,2,4,8)",
    )
    parser.add_argument("--max-in-flight", type=int, default=2, help="dgl pipeline backpressure (default: 2)")
    parser.add_argument(
        "--pin-cpus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bind each rank (dgl and pipelined backprop alike) to its own cores (default: on)",
    )
    parser.set_defaults(bench_func=run)


def spawn(mode: str, spec: dict[str, Any], world: int) -> Any:
    """Run one configuration in ``world`` fresh processes; return every rank's result (one process: its own)."""
    results = launch(run_mode, world, (mode, spec), threads=spec["threads"], pin_cpus=spec["pin_cpus"], timeout_s=600)
    return results[0] if mode == "single" else results


def run(args: argparse.Namespace) -> int:
    workers = args.workers or args.stages
    if workers != args.stages or workers < 2:
        raise UserError("--workers must equal --stages and be at least 2 (one stage per process)")
    if args.steps < 2 or args.warmup < 1 or args.rounds < 1:
        raise UserError("--steps must be >= 2, --warmup >= 1 and --rounds >= 1")
    if args.device != "cpu":
        raise UserError("degl bench pipeline measures CPU processes over gloo; run it with --device cpu")
    if args.precision != "fp32":
        raise UserError("degl bench pipeline measures fp32 training; run it without --precision")
    microbatches = [int(m) for m in args.microbatches.split(",")]
    if any(m < 1 or args.batch_size % m for m in microbatches):
        raise UserError(f"--microbatches must divide --batch-size {args.batch_size}, got {args.microbatches}")
    threads = args.threads or default_threads(workers)
    shape = parse_shape(args.input_shape)
    # Decide the cut once, with this process's thread budget, so every configuration uses it.
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    backbone = build_model(args.model, width=args.width, input_shape=shape, num_classes=args.num_classes)
    stages = build_stages(
        backbone, args.stages, aux=args.aux, cuts=parse_cuts(args.cuts), split=args.split, time_batch=args.batch_size
    )
    cuts = [s.block_indices[0] for s in stages[1:]]
    spec = {
        "model": args.model,
        "width": args.width,
        "input_shape": list(shape),
        "num_classes": args.num_classes,
        "stages": args.stages,
        "aux": args.aux,
        "cuts": cuts,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": threads,
        "max_in_flight": args.max_in_flight,
        "pin_cpus": args.pin_cpus,
    }
    samples: dict[str, list[float]] = {"single": [], "pipeline": [], "single_all": []}
    # Schedule1F1B needs at least one microbatch per stage.
    pippy: dict[str, dict[int, list[float]]] = {
        "gpipe": {m: [] for m in microbatches},
        "1f1b": {m: [] for m in microbatches if m >= workers},
    }
    if not pippy["1f1b"]:
        raise UserError(f"--microbatches needs a value >= {workers} (the number of stages) for 1F1B")
    idle: list[list[float]] = []
    pippy_idle: dict[str, list[float]] = {}
    batch = args.batch_size
    for _ in range(args.rounds):
        samples["single"].append(batch / spawn("single", spec, 1)["median_step_s"])
        ranks = spawn("dgl", spec, workers)
        samples["pipeline"].append(batch / ranks[-1]["median_step_s"])
        idle.append([r["idle_fraction"] for r in ranks])
        waits = [(r["recv_wait_fraction"], r["send_wait_fraction"]) for r in ranks]
        samples["single_all"].append(
            batch / spawn("single", {**spec, "threads": threads * workers}, 1)["median_step_s"]
        )
        for schedule, by_count in pippy.items():
            for m in by_count:
                ranks_p = spawn(schedule, {**spec, "microbatches": m}, workers)
                pippy[schedule][m].append(batch / ranks_p[-1]["median_step_s"])
                pippy_idle[f"{schedule}/{m}"] = [round(r["idle_fraction_estimated"], 4) for r in ranks_p]
    med = {k: statistics.median(v) for k, v in samples.items()}
    best = {s: max(((statistics.median(v), m) for m, v in by_m.items())) for s, by_m in pippy.items()}
    idle_fraction = [round(statistics.median(col), 4) for col in zip(*idle)]
    result = {
        "model": args.model,
        "width": args.width,
        "stages": args.stages,
        "workers": workers,
        "cuts": cuts,
        "split": args.split,
        "aux": args.aux,
        "batch_size": batch,
        "input_shape": list(shape),
        "threads_per_process": threads,
        "pin_cpus": args.pin_cpus,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "single_samples_per_s": round(med["single"], 2),
        "pipeline_samples_per_s": round(med["pipeline"], 2),
        "single_all_threads_samples_per_s": round(med["single_all"], 2),
        "pippy_gpipe_samples_per_s": round(best["gpipe"][0], 2),
        "pippy_gpipe_microbatches": best["gpipe"][1],
        "pippy_1f1b_samples_per_s": round(best["1f1b"][0], 2),
        "pippy_1f1b_microbatches": best["1f1b"][1],
        "pippy_all": {
            s: {str(m): round(statistics.median(v), 2) for m, v in by_m.items()} for s, by_m in pippy.items()
        },
        "speedup": round(med["pipeline"] / med["single"], 4),
        "speedup_vs_all_threads": round(med["pipeline"] / med["single_all"], 4),
        "ratio_vs_pippy": round(med["pipeline"] / max(best["gpipe"][0], best["1f1b"][0]), 4),
        "idle_fraction": idle_fraction,
        "recv_wait_fraction": [round(w[0], 4) for w in waits],
        "send_wait_fraction": [round(w[1], 4) for w in waits],
        "pippy_idle_fraction_estimated": pippy_idle,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    lines = [
        f"{args.model} width {args.width}, K={args.stages} (cuts {cuts}, split {args.split}), batch {batch}, "
        f"{threads} thread(s) per process, {args.steps} timed steps x {args.rounds} round(s)",
        f"(a) one process, {threads} thread(s):        {med['single']:8.1f} samples/s",
        f"(b) dgl pipeline, {workers} x {threads} thread(s):  {med['pipeline']:8.1f} samples/s  "
        f"(idle per rank {', '.join(f'{v:.1%}' for v in idle_fraction)})",
        f"(c) one process, {threads * workers} thread(s):        {med['single_all']:8.1f} samples/s",
        f"(d) backprop GPipe ({best['gpipe'][1]} microbatches): {best['gpipe'][0]:8.1f} samples/s; "
        f"1F1B ({best['1f1b'][1]} microbatches): {best['1f1b'][0]:8.1f} samples/s",
        f"speedup b/a {result['speedup']:.3f}, b/c {result['speedup_vs_all_threads']:.3f}, "
        f"b/best(d) {result['ratio_vs_pippy']:.3f}",
    ]
    for line in lines:
        print(line)
    print(json.dumps(result))
    return 0
