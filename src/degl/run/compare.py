"""``degl compare``: train several methods (and seeds) on the same backbone and budget, then tabulate.

Each run gets its own directory ``<out>/<method>-seed<seed>``. Completed runs with the same
options are reused and stopped ones are resumed, so the command is idempotent and restartable.
Every method of ``degl train`` can be compared, e.g. ``--methods dgl,dni,cdni,backprop`` or
``--methods dgl,ddg,fr,backprop``; each run keeps only the options that apply to its method. dni,
cdni, ddg and fr (like backprop) train and score only the last stage's head: their row gives that
one accuracy, under the last stage, and ``scored_stages`` in ``comparison.json`` says which.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from degl.errors import UserError
from degl.run import checkpoint
from degl.run.config import (
    INVOCATION_KEYS,
    METHODS,
    TrainConfig,
    inapplicable_options,
    upgrade_saved_config,
    without_inapplicable,
)
from degl.run.control import Interrupted
from degl.run.rundir import write_json
from degl.run.train import resume, train
from degl.runtime.dist import default_threads
from degl.runtime.stopping import signals_handled


def parse_list(text: str, *, what: str, cast=str) -> list:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise UserError(f"{what} needs at least one value")
    try:
        return [cast(item) for item in items]
    except ValueError:
        raise UserError(f"{what} must be a comma-separated list, got {text!r}") from None


def _same_run(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    # An option added to degl after the run was saved had its default then.
    saved = {**TrainConfig().to_dict(), **TrainConfig(**upgrade_saved_config(saved)).to_dict()}  # old: text lists
    keys = set(saved) | set(wanted)
    return all(saved.get(k) == wanted.get(k) for k in keys - INVOCATION_KEYS)


RESUME_OVERRIDES = ("max_steps", "threads", "progress", "device")


def plan(cfg: TrainConfig) -> tuple[str, dict[str, Any] | None]:
    """What to do for ``cfg.out``: ("train", None), ("resume", None) or ("reuse", its summary)."""
    run_dir = Path(cfg.out)  # type: ignore[arg-type]
    if checkpoint.latest_checkpoint(run_dir) is None:
        return "train", None
    _, meta = checkpoint.load_meta(run_dir)
    if not _same_run(meta["config"], {**cfg.to_dict(), "max_steps": None}):
        raise UserError(f"{run_dir} holds a run with other options; remove it or choose another --out")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("completed"):
            print(f"degl: reusing the completed run in {run_dir}", file=sys.stderr)
            return "reuse", summary
    return "resume", None


def run_one(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg`` in this process, or resume it, or reuse it when it is complete."""
    action, summary = plan(cfg)
    if action == "reuse":
        return summary  # type: ignore[return-value]
    if action == "train":
        return train(cfg)[0]
    return resume(Path(cfg.out), {k: getattr(cfg, k) for k in RESUME_OVERRIDES})[0]  # type: ignore[arg-type]


_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()


class _StopChildren:
    """While runs train in child processes: Ctrl-C or SIGTERM asks every child to checkpoint and stop.

    Children get SIGTERM, never a second SIGINT: a terminal's Ctrl-C already reached them, and two
    SIGINTs would make them abort without a checkpoint.
    """

    def __init__(self) -> None:
        self.requested = False
        self._handled: Any = None

    def __enter__(self) -> _StopChildren:
        _STOPPING.clear()
        self._handled = signals_handled(self._handle)
        self._handled.__enter__()
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        with _CHILDREN_LOCK:
            _STOPPING.set()
            for child in _CHILDREN:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

    def __exit__(self, *exc: object) -> None:
        self._handled.__exit__(*exc)


def run_in_subprocess(cfg: TrainConfig) -> dict[str, Any]:
    """:func:`run_one` in a child process (for ``--parallel``): same reuse/resume rules."""
    action, summary = plan(cfg)
    if action == "reuse":
        return summary  # type: ignore[return-value]
    command = [sys.executable, "-m", "degl", "train", "--no-progress"]
    with tempfile.TemporaryDirectory(prefix="degl-compare-") as tmp:
        if action == "train":
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "progress"}))
            command += ["--config", str(config)]
        else:
            command += ["--resume", str(cfg.out)]
            command += [
                f"--{k.replace('_', '-')}={getattr(cfg, k)}"
                for k in ("threads", "device")
                if getattr(cfg, k) is not None
            ]
        with _CHILDREN_LOCK:
            if _STOPPING.is_set():  # stopped before this run started: leave it for the next invocation
                raise Interrupted(Path(cfg.out))
            child = subprocess.Popen(command)
            _CHILDREN.add(child)
        try:
            returncode = child.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
    if returncode == 130:
        raise Interrupted(Path(cfg.out))
    if returncode != 0:
        raise UserError(f"the run in {cfg.out} failed (exit status {returncode}); see its output above")
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# Rough relative cost, so that with --parallel the longest runs start first.
_COST = {"sgl": 3, "async-dgl": 2, "dgl": 2, "dni": 2, "cdni": 2, "ddg": 2, "fr": 2, "backprop": 1}


def compare(base: TrainConfig, methods: list[str], seeds: list[int], out: Path, *, parallel: int = 1) -> dict[str, Any]:
    """Train every method x seed on ``base`` (``parallel`` at a time, in child processes) and tabulate."""
    for method in methods:
        if method not in METHODS:
            raise UserError(f"unknown method {method!r} in --methods; choose from {', '.join(METHODS)}")
    if parallel < 1:
        raise UserError(f"--parallel must be a positive integer, got {parallel}")
    unused = [
        name
        for name in inapplicable_options(base)
        if all(name in inapplicable_options(replace(base, method=m)) for m in methods)
    ]
    if unused:
        raise UserError(f"--{unused[0].replace('_', '-')} applies to none of --methods {','.join(methods)}; drop it")
    # Each method's run gets only the options that apply to it (a dgl run ignores --buffer).
    jobs = {
        (m, s): without_inapplicable(replace(base, method=m, seed=s, out=str(out / f"{m}-seed{s}")))
        for s in seeds
        for m in methods
    }
    if parallel == 1:
        results = {key: run_one(cfg) for key, cfg in jobs.items()}
    else:
        threads = base.threads or default_threads(parallel)
        order = sorted(jobs, key=lambda key: -_COST.get(key[0], 2))
        with _StopChildren() as stop, concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            futures = {
                key: pool.submit(run_in_subprocess, replace(jobs[key], threads=threads, progress=False))
                for key in order
            }
            # Wait for all of them, so that a stop request reaches runs that had not started yet.
            concurrent.futures.wait(futures.values())
            if stop.requested:
                raise Interrupted(out, resume_hint="the same degl compare command (finished runs are reused)")
            results = {key: futures[key].result() for key in jobs}
    summaries = {m: [results[(m, s)] for s in seeds] for m in methods}
    table: dict[str, Any] = {}
    for method, runs in summaries.items():
        finals = [r["test_acc"] for r in runs]
        per_stage = [statistics.fmean(values) for values in zip(*(r["test_acc_per_stage"] for r in runs))]
        mean, std = _mean_std(finals)
        stages = runs[0]["stages"]
        table[method] = {
            "stages": stages,
            # dni, cdni, ddg and fr score the last stage only (their other stages have no head to train).
            "scored_stages": list(range(stages - len(per_stage), stages)),
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
    unscored = False
    for method, row in result["methods"].items():
        final = f"{row['test_acc_mean']:.2f}" + (f" ± {row['test_acc_std']:.2f}" if len(seeds) > 1 else "")
        accs = row["test_acc_per_stage_mean"]
        missing = row["stages"] - len(accs)  # stages without a head of their own (dni, cdni, ddg, fr)
        unscored |= row["stages"] > 1 and missing > 0
        stages = " ".join(["-"] * missing + [f"{v:.2f}" for v in accs]) if row["stages"] > 1 else "-"
        lines.append(f"{method:<9} {row['stages']:>2} {final:>18}  {stages:<32} {row['train_time_s_mean']:>8.1f}")
    if unscored:
        lines.append("-: a stage with no head of its own (only the last stage's head is trained and scored)")
    return lines
