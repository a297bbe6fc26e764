"""What each process of ``degl bench pipeline --method M,N,...`` runs: every listed method in turn.

    single   one process trains each method in turn: :func:`degl.core.methods.build_method`, one
             ``train_step`` per batch, ``finish_epoch`` after the last (outside the timed window)
    ranks    rank k of each method's pipeline in turn: the :class:`~degl.runtime.sync_rank.SyncRank`
             loop for dgl, the :class:`~degl.runtime.gradient_rank.GradientRank` loop (gradients sent
             back from rank k+1) for dni, cdni, ddg and fr, built as ``degl train --workers K`` builds
             them (:func:`degl.runtime.build.make_rank`), fed one fixed batch

The methods share the processes (a barrier between them), so a comparison of M methods costs one
start of K processes per round rather than M; the caller rotates the order every round, so no
method always runs first in a fresh process. Each method builds its model from the same seed.
"""

from __future__ import annotations

import time
from typing import Any

import torch.distributed as dist

from degl.bench.pipeline_ranks import batch, build, run_rank, settings, window
from degl.core.methods import build_method
from degl.runtime.dist import DistEnv


def run_single_method(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """One process, every stage of ``name`` in turn: the per-step intervals after the warm-up."""
    method = build_method(name, build(spec), make_optimizer=settings().make_optimizer, codec_seed=spec["seed"])
    x, y = batch(spec)
    marks = []
    for _ in range(spec["warmup"] + spec["steps"]):
        method.train_step(x, y)
        marks.append(time.perf_counter())
    method.finish_epoch()  # the gradients still owed (ddg, fr, dni): settled, not timed
    return window(marks, spec["warmup"])


def run_methods_mode(env: DistEnv, mode: str, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every method of ``spec["methods"]``, in that order: ``mode`` ``single`` or ``ranks``."""
    results = {}
    for name in spec["methods"]:
        dist.barrier()  # the previous method's messages are all consumed: the ranks start together
        if mode == "single":
            results[name] = run_single_method(spec, name)
        else:
            results[name] = run_rank(env, spec, name)
    return results
