"""Draw a pipeline's timeline from ``degl train --trace``'s trace.json: one row per rank.

    python scripts/render_trace.py RUN/trace.json timeline.png [--start S] [--seconds S]

Coloured spans: compute (forward/backward/step shades on the CPU), data, receive wait, send wait,
eval; the thin bar under each row marks the training windows the idle fractions are measured
over. Uses matplotlib's Agg backend (no display needed). For interactive zooming open the same
file in ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

COLOURS = {
    "forward": "#4c72b0",
    "backward": "#2a4d80",
    "step": "#8fb0dc",
    "slowdown": "#b7b7b7",
    "compute": "#4c72b0",
    "serve": "#64b5cd",
    "data": "#55a868",
    "recv wait": "#dd8452",
    "send wait": "#c44e52",
    "eval": "#8172b2",
    "epoch end": "#937860",
}
PHASES = ("forward", "backward", "step", "slowdown")
Rows = dict[int, dict[str, list[tuple[float, float]]]]
"""Per rank, per span name: (start, duration) in seconds."""
LANES = {"busy": (0.35, 0.5), "wait": (0.35, 0.5), "window": (0.15, 0.12)}  # (bottom, height) in a row


def load(path: Path) -> Rows:
    """Per rank, per span name: (start, duration) in seconds."""
    data = json.loads(path.read_text())
    rows: Rows = defaultdict(lambda: defaultdict(list))
    for e in data["traceEvents"]:
        if e.get("ph") == "X":
            rows[int(e["pid"])][e["name"]].append((e["ts"] / 1e6, e["dur"] / 1e6))
    return rows


def render(rows: Rows, out: Path, start: float, seconds: float | None) -> None:
    ranks = sorted(rows)
    end = max(s + d for r in ranks for spans in rows[r].values() for s, d in spans)
    stop = end if seconds is None else start + seconds
    fig, ax = plt.subplots(figsize=(12, 0.9 + 0.8 * len(ranks)))
    used: set[str] = set()
    for y, rank in enumerate(ranks):
        spans = rows[rank]
        row = len(ranks) - 1 - y  # rank 0 on top
        # Where forward/backward/step are known, draw them instead of the compute span they fill.
        names = [n for n in COLOURS if n in spans and not (n == "compute" and "forward" in spans)]
        for name in names:
            bottom, height = LANES["busy"]
            ax.broken_barh(spans[name], (row + bottom, height), facecolors=COLOURS[name], linewidth=0)
            used.add(name)
        bottom, height = LANES["window"]
        ax.broken_barh(spans.get("train", []), (row + bottom, height), facecolors="#333333", linewidth=0)
    ax.set_yticks([len(ranks) - 1 - y + 0.6 for y in range(len(ranks))])
    ax.set_yticklabels([f"rank {r}" for r in ranks])
    ax.set_xlim(start, stop)
    ax.set_ylim(0, len(ranks) + 0.1)
    ax.set_xlabel("seconds since the ranks' common start")
    handles = [Patch(color=COLOURS[n], label=n) for n in COLOURS if n in used]
    handles.append(Patch(color="#333333", label="training window"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(handles), frameon=False)
    ax.set_title("degl pipeline timeline")
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path, help="trace.json written by degl train --trace")
    parser.add_argument("out", type=Path, help="image file (.png, .svg, .pdf)")
    parser.add_argument("--start", type=float, default=0.0, help="first second to show (default: 0)")
    parser.add_argument("--seconds", type=float, default=None, help="how many seconds to show (default: all)")
    args = parser.parse_args(argv)
    try:
        rows = load(args.trace)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"render_trace: error: {args.trace} is not a readable trace: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"render_trace: error: {args.trace} has no spans", file=sys.stderr)
        return 2
    render(rows, args.out, args.start, args.seconds)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
