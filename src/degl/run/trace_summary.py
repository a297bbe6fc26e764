"""``degl trace summary FILE``: where each rank's time went, read back from a run's ``trace.json``.

Per rank, over its training windows (the ``train`` spans: each epoch's training, evaluation
excluded, the interval the run's ``idle_fraction_per_stage`` is measured over): the busy fraction
(``compute``, ``data``, and an asynchronous rank's ``serve`` spans), idle = 1 - busy, and the fractions spent waiting to
receive and to send. The same figures as ``summary.json``'s, measured from the spans instead of
the rank's counters, so the two agree to within the few microseconds of bookkeeping per step.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from degl.errors import UserError
from degl.runtime.trace import CATEGORIES, FORMAT

BUSY = tuple(name for name, category in CATEGORIES.items() if category == "busy")  # compute, data, serve, eval
WAITS = {"recv wait": "recv_wait", "send wait": "send_wait"}


def load_trace(path: Path) -> list[dict[str, Any]]:
    """The complete events of a trace written by ``degl train --trace`` (UserError otherwise)."""
    what = "is not a trace written by 'degl train --trace'"
    if not path.is_file():
        raise UserError(f"{path} does not exist; a run started with --trace writes RUN/trace.json")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} {what} (not JSON: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or (data.get("otherData") or {}).get("format") != FORMAT:
        raise UserError(f"{path} {what} (no {FORMAT!r} marker in otherData)")
    events = data.get("traceEvents")
    if not isinstance(events, list):
        raise UserError(f"{path} {what} (traceEvents is not a list)")
    try:
        return [
            {"name": e["name"], "pid": int(e["pid"]), "ts": float(e["ts"]), "dur": float(e["dur"])}
            for e in events
            if e.get("ph") == "X" and e.get("name") in CATEGORIES
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} {what} (malformed event: {exc})") from None


def _clipped(spans: list[tuple[float, float]], windows: list[tuple[float, float]]) -> list[float]:
    """Seconds of ``spans`` inside each window (windows sorted and disjoint; times in microseconds)."""
    starts = [w[0] for w in windows]
    inside = [0.0] * len(windows)
    for start, end in spans:
        i = bisect.bisect_right(starts, end) - 1
        while i >= 0 and windows[i][1] > start:
            overlap = min(end, windows[i][1]) - max(start, windows[i][0])
            if overlap > 0:
                inside[i] += overlap
            i -= 1
    return [us / 1e6 for us in inside]


def _fractions(window_s: float, busy: float, recv: float, send: float) -> dict[str, float]:
    total = max(window_s, 1e-12)
    return {
        "window_s": round(window_s, 6),
        "busy": round(busy / total, 4),
        "idle": round(1 - busy / total, 4),
        "recv_wait": round(recv / total, 4),
        "send_wait": round(send / total, 4),
    }


def summarize(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rank (sorted): fractions over all training windows and over the last one, steps, eval time."""
    by_rank: dict[int, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        by_rank[e["pid"]][e["name"]].append((e["ts"], e["ts"] + e["dur"]))
    rows = []
    for rank in sorted(by_rank):
        spans = by_rank[rank]
        windows = sorted(spans["train"])
        if not windows:
            raise UserError(f"rank {rank} has no training window ('train' span) in the trace: it is incomplete")
        lengths = [(end - start) / 1e6 for start, end in windows]
        busy = _clipped([s for name in BUSY for s in spans[name]], windows)
        waits = {key: _clipped(spans[name], windows) for name, key in WAITS.items()}
        recv, send = waits["recv_wait"], waits["send_wait"]
        rows.append(
            {
                "rank": rank,
                "windows": len(windows),
                **_fractions(sum(lengths), sum(busy), sum(recv), sum(send)),
                "last_window": _fractions(lengths[-1], busy[-1], recv[-1], send[-1]),
                "steps": len(spans["compute"]),
                "eval_s": round(sum(end - start for start, end in spans["eval"]) / 1e6, 6),
            }
        )
    if not rows:
        raise UserError("the trace holds no spans")
    return rows


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """A table, one line per rank."""
    lines = [f"{'rank':>4}  {'train s':>8}  {'busy':>6}  {'idle':>6}  {'recv wait':>9}  {'send wait':>9}  {'steps':>6}"]
    for r in rows:
        lines.append(
            f"{r['rank']:>4}  {r['window_s']:>8.3f}  {r['busy']:>6.1%}  {r['idle']:>6.1%}  "
            f"{r['recv_wait']:>9.1%}  {r['send_wait']:>9.1%}  {r['steps']:>6}"
        )
    if any(r["windows"] > 1 for r in rows):
        lines.append("(over every epoch's training; summary.json's idle_fraction_per_stage is the last epoch's:")
        lines.append(" " + ", ".join(f"rank {r['rank']} idle {r['last_window']['idle']:.1%}" for r in rows) + ")")
    return lines


def trace_summary(path: Path) -> dict[str, Any]:
    """Everything ``degl trace summary`` prints, as one JSON-ready object."""
    return {"trace": str(path), "ranks": summarize(load_trace(path))}
