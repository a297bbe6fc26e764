"""DGL against the paper's alternatives on Fashion-MNIST: DNI / cDNI (part A) and DDG / FR (part B).

    python experiments/alternatives/run.py                       # both parts, the study's budget
    python experiments/alternatives/run.py --parts a --epochs-a 3 --seeds 0,1
    python experiments/alternatives/run.py --train-size 2048 --epochs 1 --seeds 0 --timing-rounds 1 \
        --out /tmp/alt --results-dir /tmp/alt                    # smoke test

Part A is the paper's DNI comparison (paper-spec §2.5, §4.1) on 1x28x28: ``dni-cnn`` (28 -> 9 -> 3
-> 1), K=3 (one stage per conv layer), methods ``dgl`` with the synthesizer-shaped ``dni`` aux heads
(the paper's DGL side), ``dni``, ``cdni`` and ``backprop``. Part B is the DDG comparison (§2.6,
§4.4) at a size this machine can train: ``resnet20`` (resnet110's family, 3 blocks per group) at
reduced width, K=2 at the paper-style half cut, methods ``dgl`` (mlp-sr aux, as the paper's code
hard-codes), ``ddg``, ``fr`` and ``backprop``.

Within a part every method gets the same net, width, optimizer, lr, schedule, batch, epochs, seeds
and data (no augmentation), so the comparison is at equal epochs. Each run is a fresh
``degl train`` command (experiments/common.py ``train_command``); with ``--parallel 2`` two of
them run at once with one thread each (both cores busy), longest first. Completed runs are reused
when the script is rerun with the same options (the run folder names the budget).

Why these budgets (the paper's are far beyond a 2-core CPU):

- Part A: the paper trains 1500-2000 epochs with Adam at a constant 3e-5 and batch 256. We keep
  Adam, batch 256 and no weight decay, but use lr 1e-3 (Adam's usual) with a cosine decay to 0 so
  that a few epochs get close to a plateau (3e-5 is made for 1500 epochs; over a few it would leave
  every method far from converged); the decay makes the last-epoch number less noisy than a
  constant lr would. Width 0.25 (32 channels instead of 128): the DGL heads and the DNI
  synthesizers are 5x5-conv stacks that cost ~2.5x the main net, and their MACs grow with the
  square of the width.
- Part B: the paper runs 300 epochs of SGD (momentum 0.9, wd 5e-4, lr 0.01, /10 at 150 and 225).
  We keep SGD momentum 0.9, wd 5e-4 and batch 128 and use lr 0.05 with a cosine decay over the few
  epochs we can afford: between the paper's 0.01 (made for 300 epochs) and the usual ResNet 0.1,
  picked before any full run and not tuned. Width 0.5 (8/16/32 channels) and depth 20 instead of
  110 (width 0.25 trained no faster here: at this size per-step overheads dominate).
- Epochs: a smoke run (``--train-size 10240 --epochs 1``, two runs at once, the machine shared
  with other jobs) timed one epoch at ~75 s (dni-cnn backprop) to ~290 s (resnet20 dgl) of
  training, so we first ran 3 epochs of each part (17 min). Its ranking still changed from epoch
  to epoch, so the study's budget is 6 epochs of part A and 5 of part B (seed 0: 24 min with the
  timing rounds), then a second seed of part A (its DGL-backprop gap is the paper's headline):
  more epochs rather than more seeds; three seeds of both parts would take well over an hour.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

import common

from degl.run.plot import plot_runs, save_figure


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    model: str
    width: float
    stages: int
    batch_size: int
    optimizer: list[str]
    methods: dict[str, list[str]]  # method -> its own extra options
    cost: dict[str, float]  # training time per epoch, part A's backprop = 1 (smoke run; longest first)
    paper: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # method -> (acc, source)
    paper_note: str = ""


PARTS = {
    "a": Part(
        key="a",
        title="DNI-comparison CNN (`dni-cnn`), K=3",
        model="dni-cnn",
        width=0.25,
        stages=3,
        batch_size=256,
        optimizer=["--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0", "--schedule", "cosine"],
        methods={"dgl": ["--aux", "dni"], "dni": [], "cdni": [], "backprop": []},
        cost={"dgl": 1.6, "cdni": 2.0, "dni": 2.0, "backprop": 1.0},
        paper={
            "dgl": (85.05, "log, epoch 1499"),
            "backprop": (84.35, "log, epoch 1500"),
            "cdni": (81.39, "log, epoch 1500"),
            "dni": (63.24, "log, epoch 1500"),
        },
        paper_note="CIFAR-10, full width, Adam 3e-5, batch 256, the official logs at epoch 1500"
        " (paper-spec §4.1; the paper prints no table)",
    ),
    "b": Part(
        key="b",
        title="CIFAR ResNet family (`resnet20`, resnet110's at 3 blocks per group), K=2",
        model="resnet20",
        width=0.5,
        stages=2,
        batch_size=128,
        optimizer=[
            *("--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"),
            *("--weight-decay", "5e-4", "--schedule", "cosine"),
        ],
        methods={"dgl": ["--aux", "mlp-sr"], "ddg": [], "fr": [], "backprop": []},
        cost={"dgl": 3.9, "fr": 3.4, "backprop": 3.1, "ddg": 2.7},
        paper={
            "dgl": (93.5, "[N1] 93.5 ± 0.1"),
            "backprop": (93.53, "[N1]; [FDG] 93.59"),
            "ddg": (93.41, "[FDG]"),
            "fr": (None, "not found"),
        },
        paper_note="CIFAR-10, ResNet-110 K=2, 300 epochs (paper-spec §4.4; secondary sources)",
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="a,b", help="which parts: a (DNI CNN), b (ResNet), or a,b (default)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of both parts (see --epochs-a/-b)")
    parser.add_argument("--epochs-a", type=int, default=None, help="epochs of part A (default: --epochs or 6)")
    parser.add_argument("--epochs-b", type=int, default=None, help="epochs of part B (default: --epochs or 5)")
    parser.add_argument("--seeds", default=None, help="seeds of both parts, comma-separated (see --seeds-a/-b)")
    parser.add_argument("--seeds-a", default=None, help="seeds of part A (default: --seeds or 0,1)")
    parser.add_argument("--seeds-b", default=None, help="seeds of part B (default: --seeds or 0)")
    parser.add_argument("--width-a", type=float, default=PARTS["a"].width, help="dni-cnn width (default: 0.25)")
    parser.add_argument("--width-b", type=float, default=PARTS["b"].width, help="resnet20 width (default: 0.5)")
    parser.add_argument(
        "--parallel", type=int, default=2, help="trainings at once, each with cores/parallel threads (default: 2)"
    )
    parser.add_argument(
        "--timing-rounds",
        type=int,
        default=3,
        help="after the study, rounds of short side-by-side runs that time every method's steps (0: none; default 3)",
    )
    parser.add_argument("--timing-steps", type=int, default=40, help="training steps of each timing run (default: 40)")
    parser.add_argument("--train-size", type=int, default=None, help="only the first N training images (smoke)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the library's search)")
    parser.add_argument("--out", default="runs/experiments/alternatives", help="folder of the individual runs")
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR), help="markdown, JSON and PNGs go here")
    args = parser.parse_args(argv)
    args.parts = [p.strip().lower() for p in args.parts.split(",") if p.strip()]
    if not args.parts or any(p not in PARTS for p in args.parts):
        parser.error("--parts takes a, b or a,b")
    args.epochs_a = args.epochs_a or args.epochs or 6
    args.epochs_b = args.epochs_b or args.epochs or 5
    args.seeds_a = common.parse_seeds(args.seeds_a or args.seeds or "0,1")
    args.seeds_b = common.parse_seeds(args.seeds_b or args.seeds or "0")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    return args


@dataclass
class Job:
    part: Part
    method: str
    seed: int
    out: Path
    options: list[str]
    cost: float
    summary: dict[str, Any] | None = None
    timing_round: int | None = None  # a short --max-steps run that only times steps
    reused: bool = False  # finished by an earlier invocation


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = []
    for key in args.parts:
        part = PARTS[key]
        epochs, seeds = getattr(args, f"epochs_{key}"), getattr(args, f"seeds_{key}")
        width = getattr(args, f"width_{key}")
        budget = ["--model", part.model, "--width", str(width), "--stages", str(part.stages), "--epochs", str(epochs),
                  "--batch-size", str(part.batch_size), *part.optimizer, "--dataset", "fashion-mnist",
                  "--no-augment", "--channels-last", "--threads", str(threads)]  # fmt: skip
        if args.train_size:
            budget += ["--train-size", str(args.train_size)]
        if args.data_dir:
            budget += ["--data-dir", args.data_dir]
        folder = f"{key}-{part.model}-w{width:g}-e{epochs}-b{part.batch_size}" + (
            f"-n{args.train_size}" if args.train_size else ""
        )
        for method, extra in part.methods.items():
            for seed in seeds:
                jobs.append(
                    Job(
                        part,
                        method,
                        seed,
                        Path(args.out) / folder / f"{method}-seed{seed}",
                        [*budget, "--method", method, *extra, "--seed", str(seed)],
                        part.cost[method] * epochs,
                    )
                )
    return sorted(jobs, key=lambda j: -j.cost)  # longest first: two workers end close together


def plan_timing(jobs: list[Job], rounds: int, steps: int) -> list[Job]:
    """Per round, every (part, method) of seed ``jobs``' first seed for ``steps`` steps, with the
    study's options; the order rotates from round to round so each method meets other neighbours."""
    first = [j for j in jobs if j.seed == min(k.seed for k in jobs if k.part.key == j.part.key)]
    first.sort(key=lambda j: (j.part.key, list(j.part.methods).index(j.method)))
    timing = []
    for r in range(rounds):
        shift = (r * 3) % len(first)
        for job in first[shift:] + first[:shift]:
            out = job.out.parent / "timing" / f"round{r}" / job.method
            options = [*job.options, "--max-steps", str(steps)]
            timing.append(Job(job.part, job.method, job.seed, out, options, 0.0, timing_round=r))
    return timing


def run_jobs(jobs: list[Job], parallel: int) -> None:
    def one(job: Job) -> Job:
        tick = time.perf_counter()
        job.reused = (job.out / "summary.json").is_file()
        job.summary = common.train_command(job.out, job.options)
        if job.timing_round is not None:
            per_step = job.summary["train_time_s"] / max(1, job.summary["steps_completed"])
            print(f"  timing round {job.timing_round} part {job.part.key} {job.method:8s}: {per_step:.3f} s/step")
            return job
        print(
            f"  part {job.part.key} {job.method:8s} seed {job.seed}: {job.summary['test_acc']:.2f} %,"
            f" training {job.summary['train_time_s']:.0f} s ({time.perf_counter() - tick:.0f} s here)",
            flush=True,
        )
        return job

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(one, job) for job in jobs]:
            future.result()


def last_stage_curve(run: Path) -> list[float]:
    """Test accuracy of the last stage after every epoch."""
    tests = [r for r in common.read_metrics(run) if r["split"] == "test"]
    last = max(r["stage"] for r in tests)
    return [r["acc"] for r in sorted((r for r in tests if r["stage"] == last), key=lambda r: r["epoch"])]


def curves_png(part: Part, jobs: list[Job], path: Path) -> None:
    """``degl plot`` of the part's runs, recoloured: colour = method, solid = last stage (the network's
    classifier), dotted = DGL's lower heads; one line per seed."""
    methods = list(part.methods)
    fig = plot_runs([j.out for j in jobs], metric="acc", split="test", x="epoch")
    ax = fig.axes[0]
    seen = set()
    for line in ax.get_lines():
        label = line.get_label()
        method = label.split(" seed ")[0] if " seed " in label else label.split(":")[0]
        stage = int(label.rsplit("stage ", 1)[1]) if "stage " in label else None
        if method not in methods or stage is None:
            line.remove()  # ensemble-of-heads lines: not part of this comparison
            continue
        last = stage == part.stages - 1 or method == "backprop"
        line.set_color(f"C{methods.index(method)}")
        line.set_linestyle("-" if last else (":", "--")[stage % 2])
        line.set_linewidth(1.6 if last else 1.0)
        name = f"{method}" + ("" if last else f" (stage {stage} head)")
        line.set_label(name if name not in seen else "_nolegend_")
        seen.add(name)
    seeds = sorted({j.seed for j in jobs})
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(
        f"Fashion-MNIST, part {part.key.upper()}: {part.model}, K={part.stages}, test accuracy"
        f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})",
        fontsize=9,
    )
    save_figure(fig, path)


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def step_times(part: Part, timing: list[Job]) -> dict[str, dict[str, Any]]:
    """Per method: seconds per training step in every timing round, their median and range, and the
    median over rounds of the ratio to backprop in the same round."""
    rounds = sorted({j.timing_round for j in timing})
    per = {
        m: {j.timing_round: j.summary["train_time_s"] / max(1, j.summary["steps_completed"]) for j in timing
            if j.method == m}
        for m in part.methods
    }  # fmt: skip
    out = {}
    for m in part.methods:
        values = [per[m][r] for r in rounds]
        ratios = [per[m][r] / per["backprop"][r] for r in rounds]
        out[m] = {
            "s_per_step": values,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "ratio_to_backprop": ratios,
            "ratio_median": statistics.median(ratios),
        }
    return out


def part_markdown(
    part: Part, jobs: list[Job], timing: list[Job], epochs: int, width: float, png: Path
) -> tuple[list[str], dict]:
    by_method = {m: [j for j in jobs if j.method == m] for m in part.methods}
    rows, data = [], {}
    steps = step_times(part, timing) if timing else {}
    bp_time = statistics.fmean(j.summary["train_time_s"] for j in by_method["backprop"])
    for method, runs in by_method.items():
        accs = [j.summary["test_acc"] for j in runs]
        times = [j.summary["train_time_s"] for j in runs]
        walls = [j.summary.get("command_wall_s", float("nan")) for j in runs]
        per_stage = ""
        if method == "dgl":
            stages = [j.summary["test_acc_per_stage"] for j in runs]
            per_stage = " / ".join(f"{statistics.fmean(s[k] for s in stages):.2f}" for k in range(len(stages[0])))
        paper_acc, source = part.paper.get(method, (None, ""))
        rows.append(
            f"| {method} | **{common.fmt(accs)}** | {', '.join(f'{a:.2f}' for a in accs)} | {per_stage or '–'} |"
            f" {statistics.fmean(times):.0f} ({statistics.fmean(times) / bp_time:.2f}×) |"
            f" {statistics.fmean(walls):.0f} |"
            + (
                f" {1000 * steps[method]['median']:.0f} [{1000 * steps[method]['min']:.0f}–"
                f"{1000 * steps[method]['max']:.0f}] ({steps[method]['ratio_median']:.2f}×) |"
                if steps
                else ""
            )
            + f" {epochs} | {f'{paper_acc:.2f}' if paper_acc else '–'} ({source}) |"
        )
        data[method] = {
            "test_acc": accs,
            "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": spread(accs),
            "train_time_s": times,
            "command_wall_s": walls,
            "seeds": [j.seed for j in runs],
            "curves": [last_stage_curve(j.out) for j in runs],
            "summaries": [j.summary for j in runs],
            "step_time": steps.get(method),
        }
    # Ranking after every epoch (mean over seeds): is it stable at the end?
    curves = {m: [statistics.fmean(c) for c in zip(*data[m]["curves"])] for m in part.methods}
    epoch_rows = [
        f"| {e + 1} | " + " | ".join(f"{curves[m][e]:.2f}" for m in part.methods) + " | "
        + " > ".join(sorted(part.methods, key=lambda m: -curves[m][e])) + " |"
        for e in range(epochs)
    ]  # fmt: skip
    ours = sorted(part.methods, key=lambda m: -data[m]["test_acc_mean"])

    def order(names: list[str], acc: dict[str, float]) -> str:
        """``a > b``, or ``a ≈ b`` where the gap is within the larger seed std of the two."""
        text = names[0]
        for a, b in itertools.pairwise(names):
            std = max(data[a]["test_acc_std"], data[b]["test_acc_std"])
            text += (" ≈ " if acc[a] - acc[b] <= std else " > ") + b
        return text

    mean_acc = {m: data[m]["test_acc_mean"] for m in part.methods}
    paper_known = {m: v for m, (v, _) in part.paper.items() if v is not None}
    paper_order = sorted(paper_known, key=lambda m: -paper_known[m])
    unreported = [m for m in part.methods if m not in paper_known]
    missing = f"; {', '.join(unreported)} not reported" if unreported else ""
    seeds = sorted({j.seed for j in jobs})
    lines = [
        f"## Part {part.key.upper()}: {part.title}",
        "",
        f"`{part.model}` width {width:g}, K={part.stages}, batch {part.batch_size},"
        f" `{' '.join(part.optimizer)}`, {epochs} epochs, seeds {', '.join(map(str, seeds))}, no augmentation,"
        f" channels-last. Method options: "
        + "; ".join(f"{m} `{' '.join(x)}`" if x else m for m, x in part.methods.items())
        + ". Only the last stage's head is the network's classifier (and the only one trained for"
        " dni/cdni/ddg/fr); DGL's lower heads are listed beside it.",
        "",
        "| method | final test acc % (last stage) | per seed | DGL per stage | training s (× backprop) |"
        " whole command s |"
        + (
            f" ms per step, median of {len(steps['backprop']['s_per_step'])} timing rounds [range] (× backprop) |"
            if steps
            else ""
        )
        + " epochs | paper, CIFAR-10 |",
        "|---|---|---|---|---|---|" + ("---|" if steps else "") + "---|---|",
        *rows,
        "",
        (
            f"Ranking here (mean over seeds; ≈: a gap within the larger seed std of the two):"
            f" **{order(ours, mean_acc)}**."
            if len(seeds) > 1
            else f"Ranking here (one seed, so no spread to tell close results apart): **{' > '.join(ours)}**."
        )
        + f" Paper ({part.paper_note}): {' > '.join(paper_order)}{missing}.",
        "",
        "Last-stage test accuracy after each epoch (mean over seeds) and the order it gives:",
        "",
        "| epoch | " + " | ".join(part.methods) + " | order |",
        "|---|" + "---|" * len(part.methods) + "---|",
        *epoch_rows,
        "",
        f"![part {part.key.upper()} test accuracy per epoch]({png.name})",
        "",
    ]
    return lines, {"methods": data, "ranking": ours, "paper_ranking": paper_order, "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tick = time.perf_counter()
    commit = common.git_commit()
    jobs = plan_jobs(args)
    print(f"{len(jobs)} runs, {args.parallel} at a time", flush=True)
    run_jobs(jobs, args.parallel)
    trained = time.perf_counter() - tick
    timing = plan_timing(jobs, args.timing_rounds, args.timing_steps)
    if timing:
        print(f"timing: {len(timing)} runs of {args.timing_steps} steps, {args.parallel} at a time", flush=True)
        run_jobs(timing, args.parallel)
    elapsed = time.perf_counter() - tick

    device = common.resolved_device("cpu")
    # e.g. alternatives-fashion-mnist-a6ep-b5ep (-3seeds): budgets of their own keep their own file
    budget = "-".join(f"{k}{getattr(args, f'epochs_{k}')}ep" for k in args.parts)
    most_seeds = max(len(getattr(args, f"seeds_{k}")) for k in args.parts)
    budget += f"-{most_seeds}seeds" if most_seeds > 1 else ""
    budget += f"-n{args.train_size}" if args.train_size else ""
    stem = common.results_stem(f"alternatives-fashion-mnist-{budget}", device)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    command = "python experiments/alternatives/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    run_wall = sum(j.summary.get("command_wall_s", 0.0) for j in jobs)
    timing_wall = sum(j.summary.get("command_wall_s", 0.0) for j in timing)
    reused = sum(j.reused for j in jobs + timing)
    markdown = [
        f"# DGL vs DNI, cDNI, DDG, FR and backprop on Fashion-MNIST ({stem})",
        "",
        f"- command: `{command.strip()}`",
        f"- commit: {commit}",
        f"- machine: {common.hardware_description(device, threads)}; {args.parallel} trainings at once,"
        f" {threads} thread(s) each, on a machine others use too: the training seconds are indicative"
        " (single runs beside one another), not a timing benchmark",
        f"- data: Fashion-MNIST, {args.train_size or 60000} training / 10000 test images; training seconds"
        " = summary.json `train_time_s` (evaluation excluded), whole command = start-up + data + training"
        " + per-epoch evaluation",
        f"- wall-clock: the {len(jobs)} training commands took {run_wall / 60:.1f} min together and the"
        f" {len(timing)} timing commands {timing_wall / 60:.1f} min, {args.parallel} at a time: about"
        f" {(run_wall + timing_wall) / args.parallel / 60:.0f} min for the study from scratch; this invocation"
        f" took {elapsed / 60:.1f} min ({trained / 60:.1f} min before the timing rounds)"
        + (f", reusing {reused} finished runs of an earlier one" if reused else ""),
        (
            f"- step times: the training seconds of single runs depend on what else the machine did meanwhile"
            f" (others' jobs come and go), so after the study every method ran {args.timing_rounds} more times"
            f" for {args.timing_steps} steps (`--max-steps`, same options, {args.parallel} at a time, the order"
            " rotated per round); the tables give the median seconds per step, the range, and the median ratio"
            " to backprop's step in the same round (the first step's warm-up included)"
            if timing
            else "- no timing rounds (`--timing-rounds 0`)"
        ),
        "- lr, widths and schedules were fixed before any full run (a smoke run of one epoch on a subset timed"
        " the methods); the study's epochs (6 and 5) and part A's second seed were chosen after a 3-epoch"
        " pilot whose test-accuracy order changed from epoch to epoch, not to favour any method; see"
        " experiments/alternatives/run.py for why",
        "",
    ]
    data: dict[str, Any] = {
        "command": command,
        "commit": commit,
        "elapsed_s": elapsed,
        "training_s": trained,
        "training_commands_wall_s": run_wall,
        "timing_commands_wall_s": timing_wall,
        "reused_runs": reused,
        "timing_rounds": args.timing_rounds,
        "timing_steps": args.timing_steps,
        "parts": {},
    }
    for key in args.parts:
        part = PARTS[key]
        part_jobs = [j for j in jobs if j.part.key == key]
        part_jobs.sort(key=lambda j: (list(part.methods).index(j.method), j.seed))
        part_timing = [j for j in timing if j.part.key == key]
        png = results / f"{stem}-part-{key}.png"
        curves_png(part, part_jobs, png)
        lines, part_data = part_markdown(
            part, part_jobs, part_timing, getattr(args, f"epochs_{key}"), getattr(args, f"width_{key}"), png
        )
        markdown += lines
        data["parts"][key] = part_data
    text = "\n".join(markdown)
    md, js = common.write_results(results, stem, text, data)
    print(text)
    print(f"wrote {md}, {js} and the PNGs ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
