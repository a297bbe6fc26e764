"""``degl bench pipeline``: samples/s of the DGL pipeline against one process and against
pipeline-parallel backprop (``torch.distributed.pipelining`` GPipe and 1F1B), side by side.

Every configuration runs in fresh processes with the same backbone, cut, batch and thread budget;
rounds are interleaved and each figure is the median over rounds of the median step time.
``--method`` other than ``dgl`` alone (e.g. ``dgl,dni,ddg,fr``) compares the methods' pipelines
instead (:mod:`degl.bench.pipeline_methods`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import torch

from degl.bench import add_common_options, add_method_option, parse_methods
from degl.bench.pipeline_methods import refuse_inapplicable, run_methods
from degl.bench.pipeline_ranks import run_mode
from degl.core.codecs import build_codec, check_codec, parse_codec
from degl.core.split import build_stages
from degl.errors import UserError
from degl.models import build_model
from degl.run.config import parse_cuts, parse_shape
from degl.runtime.dist import default_threads
from degl.runtime.launch import launch


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "pipeline", help="samples/s: each method's pipeline vs one process (dgl alone: also vs pipelined backprop)"
    )
    add_common_options(parser, split="time")
    add_method_option(parser, "dgl alone also runs the pipelined-backprop baselines and allows --codec, --link-mbps")
    parser.add_argument("--workers", type=int, default=None, help="processes, one stage each (default: --stages)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions (default: 1)")
    parser.add_argument(
        "--microbatches",
        default="1,2,4,8",
        help="microbatch counts tried for GPipe/1F1B (with --method dgl alone); the best is reported "
        "(default: 1,2,4,8)",
    )
    parser.add_argument("--max-in-flight", type=int, default=2, help="pipeline backpressure, every method (default: 2)")
    parser.add_argument(
        "--codec",
        default="none",
        help="how activations cross the boundaries, as 'degl train --codec' (one process simulates it) (default: none)",
    )
    parser.add_argument(
        "--link-mbps",
        type=float,
        default=None,
        help="EMULATE links of this many Mbit/s between the dgl pipeline's ranks: a message is not delivered "
        "before its bytes could have crossed such a link (pipelined backprop is then not run: its transport "
        "has no emulator) (default: off)",
    )
    parser.add_argument(
        "--pin-cpus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bind each rank (every method's and pipelined backprop's) to its own cores (default: on)",
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
    if args.link_mbps is not None and not args.link_mbps > 0:
        raise UserError(f"--link-mbps must be positive, got {args.link_mbps}")
    parse_codec(args.codec)
    methods = parse_methods(args.method)
    if methods != ["dgl"]:
        refuse_inapplicable(args, methods)
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
    boundaries = [tuple(s.out_shape) for s in stages[:-1]]
    check_codec(args.codec, boundaries)
    codec = build_codec(args.codec)
    message_bytes = [codec.wire_bytes(args.batch_size, shape) for shape in boundaries]
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
        "codec": args.codec,
        "link_mbps": args.link_mbps,
    }
    if methods != ["dgl"]:
        headline = (
            f"{args.model} width {args.width}, K={args.stages} (cuts {cuts}, split {args.split}), batch "
            f"{args.batch_size}, {threads} thread(s) per process, {args.steps} timed steps x {args.rounds} round(s)"
        )
        return run_methods(args, methods, spec, workers, headline)
    samples: dict[str, list[float]] = {"single": [], "pipeline": [], "single_all": []}
    # Schedule1F1B needs at least one microbatch per stage.
    pippy: dict[str, dict[int, list[float]]] = {
        "gpipe": {m: [] for m in microbatches},
        "1f1b": {m: [] for m in microbatches if m >= workers},
    }
    if not pippy["1f1b"]:
        raise UserError(f"--microbatches needs a value >= {workers} (the number of stages) for 1F1B")
    emulated = args.link_mbps is not None
    if emulated:
        pippy = {"gpipe": {}, "1f1b": {}}
    codec_ms: list[list[float]] = []
    compute_ms: list[list[float]] = []
    idle: list[list[float]] = []
    pippy_idle: dict[str, list[float]] = {}
    batch = args.batch_size
    for _ in range(args.rounds):
        samples["single"].append(batch / spawn("single", spec, 1)["median_step_s"])
        ranks = spawn("dgl", spec, workers)
        samples["pipeline"].append(batch / ranks[-1]["median_step_s"])
        idle.append([r["idle_fraction"] for r in ranks])
        waits = [(r["recv_wait_fraction"], r["send_wait_fraction"]) for r in ranks]
        codec_ms.append([1000 * r["codec_s_per_step"] for r in ranks])
        compute_ms.append([1000 * r["busy_s_per_step"] for r in ranks])
        samples["single_all"].append(
            batch / spawn("single", {**spec, "threads": threads * workers}, 1)["median_step_s"]
        )
        for schedule, by_count in pippy.items():
            for m in by_count:
                ranks_p = spawn(schedule, {**spec, "microbatches": m}, workers)
                pippy[schedule][m].append(batch / ranks_p[-1]["median_step_s"])
                pippy_idle[f"{schedule}/{m}"] = [round(r["idle_fraction_estimated"], 4) for r in ranks_p]
    med = {k: statistics.median(v) for k, v in samples.items()}
    # Rounds are interleaved, so each round's ratio compares configurations measured side by side.
    equal_cores = [p / s for p, s in zip(samples["pipeline"], samples["single_all"])]
    best = {
        s: max(((statistics.median(v), m) for m, v in by_m.items()), default=(float("nan"), 0))
        for s, by_m in pippy.items()
    }
    codec_ms_rank = [round(statistics.median(col), 3) for col in zip(*codec_ms)]
    busy_ms_rank = [round(statistics.median(col), 3) for col in zip(*compute_ms)]
    link_ms = [round(b * 8 / (args.link_mbps * 1e6) * 1000, 3) for b in message_bytes] if emulated else None
    bound = None
    if link_ms is not None:
        bound = "communication" if max(link_ms) > max(busy_ms_rank) else "compute"
    idle_fraction = [round(statistics.median(col), 4) for col in zip(*idle)]
    result: dict[str, Any] = {
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
        "speedup_vs_all_threads_per_round": [round(r, 4) for r in equal_cores],
        "ratio_vs_pippy": None if emulated else round(med["pipeline"] / max(best["gpipe"][0], best["1f1b"][0]), 4),
        "idle_fraction": idle_fraction,
        "recv_wait_fraction": [round(w[0], 4) for w in waits],
        "send_wait_fraction": [round(w[1], 4) for w in waits],
        "pippy_idle_fraction_estimated": pippy_idle,
        "codec": codec.name,
        "message_bytes": message_bytes,
        "wire_bytes_per_sample": [round(b / batch, 3) for b in message_bytes],
        "codec_ms_per_step": codec_ms_rank,
        "busy_ms_per_step": busy_ms_rank,
        "link_mbps_emulated": args.link_mbps,
        "link_ms_per_message_emulated": link_ms,
        "bound": bound,
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
        f"1F1B ({best['1f1b'][1]} microbatches): {best['1f1b'][0]:8.1f} samples/s"
        if not emulated
        else "(d) pipelined backprop: not run (its transport has no link emulator)",
        f"speedup b/a {result['speedup']:.3f}, b/c {result['speedup_vs_all_threads']:.3f}"
        + ("" if emulated else f", b/best(d) {result['ratio_vs_pippy']:.3f}"),
        f"equal cores (b/c) per round: {', '.join(f'{r:.3f}' for r in equal_cores)} "
        f"(spread {max(equal_cores) - min(equal_cores):.3f})",
        f"codec {codec.name}: {', '.join(f'{b / batch:.0f}' for b in message_bytes)} bytes/sample per boundary; "
        f"encode+decode {', '.join(f'{v:.2f}' for v in codec_ms_rank)} ms/step per rank; "
        f"busy {', '.join(f'{v:.1f}' for v in busy_ms_rank)} ms/step per rank",
    ]
    if link_ms is not None:
        lines.append(
            f"EMULATED link {args.link_mbps:g} Mbit/s: {', '.join(f'{v:.1f}' for v in link_ms)} ms per message "
            f"per boundary vs {max(busy_ms_rank):.1f} ms busy per step on the busiest rank: {bound}-bound"
        )
    for line in lines:
        print(line)
    if emulated:  # no pipelined backprop ran: no figures rather than NaN
        result.update({k: None for k in result if k.startswith("pippy_") and k != "pippy_all"})
    print(json.dumps(result))
    return 0
