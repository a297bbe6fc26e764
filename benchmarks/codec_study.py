"""Compressed activations (``--codec``, ``--buffer-codec``): accuracy against bytes, and link speed.

``accuracy``: trains the demo net (Fashion-MNIST, ``cnn6`` width 0.125, K=4, mlp heads, no
augmentation, channels-last) once per codec with ``degl train --codec C`` in one process (the codec
simulated at every boundary, bit-identical to the pipeline), and asynchronous DGL with and without
a compressed replay buffer (``--method async-dgl --buffer 2 --buffer-codec``). Reports final test
accuracy (through the codec, and of the exact forward pass), bytes per sample per boundary and their
ratio to fp32, buffer memory; draws accuracy against bytes.

``bandwidth``: ``degl bench pipeline --stages 2 --codec C --link-mbps N`` for every codec and link
speed (the link is EMULATED in the transport), one run each: samples/s and whether the pipeline is
communication- or compute-bound.

    python benchmarks/report.py --name codec-study -- python benchmarks/codec_study.py accuracy --epochs 3
    python benchmarks/report.py --name codec-bandwidth -- python benchmarks/codec_study.py bandwidth

Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEMO = [
    "--model", "cnn6", "--width", "0.125", "--stages", "4", "--aux", "mlp", "--no-augment", "--channels-last",
    "--no-progress",
]  # fmt: skip
CODECS = ["none", "bf16", "int8", "vq:256:8", "vq:64:8"]
ASYNC = [["--method", "async-dgl", "--buffer", "2", "--buffer-codec", c] for c in ("none", "int8")]
GOALS = {"int8": (0.2, 0.26), "vq": (1.0, 1 / 16)}  # (max accuracy drop in points, max bytes ratio)


def degl(*args: str) -> list[str]:
    return [sys.executable, "-m", "degl", *args]


def train(args: list[str], out: Path) -> dict:
    tick = time.perf_counter()
    done = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"codec_study: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = round(time.perf_counter() - tick, 1)
    return summary


def accuracy(ns: argparse.Namespace) -> int:
    base = degl("train", *DEMO, "--epochs", str(ns.epochs), "--threads", "1", "--seed", str(ns.seed))
    codecs = ns.codecs.split(",")
    if "none" not in codecs:
        raise SystemExit("codec_study: --codecs must include none (the reference)")
    runs = [(c, [*base, "--codec", c]) for c in codecs]
    runs += [(f"async buffer-codec {a[-1]}", [*base, *a]) for a in ASYNC if ns.run_async]
    runs.sort(key=lambda run: not run[0].startswith("vq"))  # the slowest first: they do not finish last
    with tempfile.TemporaryDirectory(prefix="degl-codec-") as tmp, ThreadPoolExecutor(ns.parallel) as pool:
        futures = [pool.submit(train, command, Path(tmp) / str(i)) for i, (_, command) in enumerate(runs)]
        results = {name: future.result() for (name, _), future in zip(runs, futures)}
    fp32 = results["none"]["wire_bytes_per_sample"]
    rows = []
    order = [*codecs, *(name for name in results if name not in codecs)]
    results = {name: results[name] for name in order}
    for name, s in results.items():
        ratio = sum(s["wire_bytes_per_sample"]) / sum(fp32)
        rows.append(
            {
                "run": name,
                "test_acc": s["test_acc"],
                "test_acc_exact": (s.get("test_acc_exact_per_stage") or [None])[-1],
                "wire_bytes_per_sample": s["wire_bytes_per_sample"],
                "bytes_ratio": round(ratio, 4),
                "buffer_bytes": s["buffer_bytes"],
                "train_time_s": s["train_time_s"],
            }
        )
    none_acc = results["none"]["test_acc"]
    print(f"Fashion-MNIST, cnn6 width 0.125, K=4, {ns.epochs} epoch(s), seed {ns.seed}, 1 thread per run")
    print("| run | test acc % (through codec) | exact forward % | bytes/sample per boundary | x fp32 | buffer bytes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        exact = f"{r['test_acc_exact']:.2f}" if r["test_acc_exact"] is not None else "-"
        per = ", ".join(f"{b:.0f}" for b in r["wire_bytes_per_sample"])
        print(f"| {r['run']} | {r['test_acc']:.2f} | {exact} | {per} | {r['bytes_ratio']:.4f} | {r['buffer_bytes']} |")
    goals = {}
    for name, r in zip(results, rows):
        kind = name.split(":")[0]
        if kind in GOALS:
            drop, ratio = GOALS[kind]
            met = none_acc - r["test_acc"] <= drop and r["bytes_ratio"] <= ratio
            goals[name] = met
            print(
                f"goal {name}: within {drop} points of none ({none_acc - r['test_acc']:+.2f} lost) at <= "
                f"{ratio:.4f}x the bytes ({r['bytes_ratio']:.4f}x): {'met' if met else 'NOT met'}"
            )
    if ns.plot:
        plot(rows, Path(ns.plot), ns.epochs)
        print(f"plot: {ns.plot}")
    print(json.dumps({"epochs": ns.epochs, "seed": ns.seed, "runs": rows, "goals": goals}))
    return 0


def plot(rows: list[dict], path: Path, epochs: int) -> None:
    """Accuracy against bytes (the synchronous runs), with each goal's corner: above and left of it is met."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    shown = [r for r in rows if not r["run"].startswith("async")]
    for r in shown:
        ax.scatter(r["bytes_ratio"], r["test_acc"], color="C0")
        # Of two points close in bytes, the higher one's label goes above, the lower one's below.
        near = [o for o in shown if o is not r and abs(o["bytes_ratio"] / r["bytes_ratio"] - 1) < 0.3]
        below = any(o["test_acc"] > r["test_acc"] for o in near)
        offset = (4, -12) if below else (4, 4)
        ax.annotate(r["run"], (r["bytes_ratio"], r["test_acc"]), textcoords="offset points", xytext=offset)
    none = next(r["test_acc"] for r in shown if r["run"] == "none")
    low = min(min(r["test_acc"] for r in shown), none - 1) - 0.5
    for (drop, ratio), color, label in zip(GOALS.values(), ("C1", "C2"), ("int8 goal", "vq goal")):
        ax.plot([ratio, ratio, 2], [low, none - drop, none - drop], ls=":", color=color, label=label)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(low, none + 0.5)
    ax.margins(x=0.15)
    ax.set_xlabel("bytes sent per sample, relative to fp32 (log)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"Fashion-MNIST cnn6 w0.125 K=4, {epochs} epochs: accuracy vs bytes")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def bandwidth(ns: argparse.Namespace) -> int:
    speeds = [float(v) for v in ns.link_mbps.split(",")]
    results = []
    for mbps in speeds:
        for codec in ns.codecs.split(","):
            command = degl(
                "bench", "pipeline", "--model", "cnn6", "--width", "0.125", "--stages", "2", "--aux", "mlp",
                "--input-shape", "1,28,28", "--threads", "1", "--steps", str(ns.steps), "--warmup", "2",
                "--codec", codec, "--link-mbps", f"{mbps:g}",
            )  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"codec_study: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"$ {' '.join(command[2:])}", flush=True)
    print("cnn6 width 0.125, K=2, 2 processes x 1 thread, batch 128; links EMULATED (see docs/codecs.md)")
    print("| link Mbit/s | codec | bytes/sample | link ms/message | busy ms/step (rank 0, 1) | codec ms/step "
          "(rank 0, 1) | pipeline samples/s | one process samples/s | bound |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['link_mbps_emulated']:g} | {r['codec']} | {r['wire_bytes_per_sample'][0]:.0f} | "
            f"{r['link_ms_per_message_emulated'][0]:.1f} | {', '.join(f'{v:.0f}' for v in r['busy_ms_per_step'])} | "
            f"{', '.join(f'{v:.1f}' for v in r['codec_ms_per_step'])} | {r['pipeline_samples_per_s']:.1f} | "
            f"{r['single_samples_per_s']:.1f} | {r['bound']} |"
        )
    print(json.dumps({"runs": results}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="study", required=True)
    acc = sub.add_parser("accuracy", help="accuracy and bytes per codec (degl train)")
    acc.add_argument("--epochs", type=int, default=6)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--parallel", type=int, default=2, help="runs at a time (default: 2)")
    acc.add_argument("--plot", default=None, help="PNG file for accuracy vs bytes")
    acc.add_argument("--codecs", default=",".join(CODECS), help=f"codecs to train with (default: {','.join(CODECS)})")
    acc.add_argument("--async", dest="run_async", action=argparse.BooleanOptionalAction, default=True)
    bw = sub.add_parser("bandwidth", help="samples/s per codec and emulated link speed (degl bench pipeline)")
    bw.add_argument("--codecs", default="none,bf16,int8,vq:256:8")
    bw.add_argument("--link-mbps", default="10,100,1000", help="emulated link speeds (default: 10,100,1000)")
    bw.add_argument("--steps", type=int, default=6)
    ns = parser.parse_args()
    return accuracy(ns) if ns.study == "accuracy" else bandwidth(ns)


if __name__ == "__main__":
    raise SystemExit(main())
