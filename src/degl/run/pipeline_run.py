"""Entry point of one pipeline rank, under ``torchrun`` or ``degl train --workers K``."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from degl import checkpoint
from degl.config import TrainConfig
from degl.errors import UserError
from degl.rundir import check_new_run_dir, default_run_dir
from degl.runtime.dist import DistEnv, default_threads, device_for, init_process_group, pin_cpus
from degl.runtime.pipeline import PipelineInfo, PipelineRank, log
from degl.runtime.transport import PeerError
from degl.setup import configure_torch, load_data, make_stages, resolve_cuts
from degl.train import create_run_dir

PEER_FAILED = 3  # exit status of a rank that stopped because a neighbour failed


def check_pipeline_config(cfg: TrainConfig, world_size: int) -> None:
    if cfg.method not in ("dgl", "async-dgl"):
        raise UserError(
            f"the multi-process pipeline runs --method dgl or async-dgl, not {cfg.method}; "
            "drop --workers to train it in one process"
        )
    if cfg.stages != world_size:
        raise UserError(f"{world_size} processes but --stages {cfg.stages}: the pipeline runs one stage per process")


def prepare_first_rank(cfg: TrainConfig, env: DistEnv, resume_dir: Path | None) -> tuple[PipelineInfo, Any]:
    """Rank 0 alone reads the data and owns the run directory; everything a user can get wrong fails here."""
    check_pipeline_config(cfg, env.world_size)
    if resume_dir is not None:
        _, meta = checkpoint.load_meta(resume_dir)
        if cfg.method == "async-dgl" and meta["position"]["phase"] < 1:
            raise UserError(
                f"{resume_dir} is a stopped multi-process async-dgl run; its buffers and in-flight messages are "
                "not checkpointed, so it cannot be resumed: start a new run (or evaluate it with degl eval)"
            )
        run_dir = resume_dir
    else:
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.method, cfg.model)
        check_new_run_dir(run_dir)
    data = load_data(cfg)
    cfg = resolve_cuts(cfg, data)
    make_stages(cfg, data)  # model, K and aux errors surface before anything is written
    train_loader, test_loader = data.loaders(
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        device=torch.device("cpu"),
        augment=False,
        seed=cfg.seed,
    )
    if resume_dir is None:
        create_run_dir(cfg, run_dir)
    info = PipelineInfo(
        tuple(data.input_shape), data.num_classes, len(train_loader), test_loader.batch_sizes(), str(run_dir), cfg.cuts
    )
    return info, data


def _fingerprint(cfg: TrainConfig) -> str:
    from degl.config import INVOCATION_KEYS

    return repr(sorted((k, v) for k, v in cfg.to_dict().items() if k not in INVOCATION_KEYS))


def run_rank(cfg: TrainConfig, env: DistEnv, *, resume_dir: Path | None, print_summary: bool) -> int:
    """Run this process's stage to the end; return the exit status (0, 2 user error, 130 stopped)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    threads = cfg.threads or default_threads(local_world)
    if cfg.pin_cpus and not cfg.device.startswith("cuda"):
        pin_cpus(env.local_rank, threads, local_world)
    torch.set_num_threads(threads)
    configure_torch(cfg)
    device = device_for(env, cfg.device)
    init_process_group(env, device, cfg.fault_timeout)
    try:
        shared: list[Any] = [None]
        data = None
        if env.is_first:
            try:
                info, data = prepare_first_rank(cfg, env, resume_dir)
                shared = [info]
            except UserError as exc:
                shared = [str(exc)]
        dist.broadcast_object_list(shared, src=0)
        if isinstance(shared[0], str):
            if env.is_first:
                print(f"degl: error: {shared[0]}", file=sys.stderr)
            dist.destroy_process_group()
            return 2
        info: PipelineInfo = shared[0]
        prints = [None] * env.world_size
        dist.all_gather_object(prints, _fingerprint(cfg))
        if len(set(prints)) > 1:
            if env.is_first:
                print(
                    "degl: error: the ranks were started with different options; start them all with the same "
                    "command line",
                    file=sys.stderr,
                )
            dist.destroy_process_group()
            return 2
        rank_class = PipelineRank
        if cfg.method == "async-dgl":
            from degl.runtime.async_pipeline import AsyncPipelineRank as rank_class
        rank = rank_class(replace(cfg, cuts=info.cuts), env, device, info, data)
        if resume_dir is not None:
            problem = None
            try:
                path, meta = checkpoint.load_meta(resume_dir)
                rank.restore(path, meta)
            except (UserError, RuntimeError, KeyError) as exc:
                problem = f"rank {env.rank}: cannot resume from {resume_dir}: {str(exc).splitlines()[0][:200]}"
            problems = [None] * env.world_size
            dist.all_gather_object(problems, problem)
            if any(problems):
                if env.is_first:
                    print(f"degl: error: {next(p for p in problems if p)}", file=sys.stderr)
                dist.destroy_process_group()
                return 2
            if rank.position.phase >= 1:
                if env.is_first:
                    print(f"degl: {resume_dir} is already complete ({rank.global_step} steps)", file=sys.stderr)
                dist.destroy_process_group()
                return 0
        summary, interrupted = rank.fit()
        dist.destroy_process_group()
    except PeerError as exc:
        log(env, f"error: {exc}")
        _hard_exit(PEER_FAILED)
    except UserError as exc:
        log(env, f"error: {exc}")
        _hard_exit(2)
    except KeyboardInterrupt:
        log(env, "aborted")
        _hard_exit(130)
    except Exception:
        log(env, "internal error:\n" + traceback.format_exc())
        _hard_exit(1)
    if env.is_first and summary is not None:
        if interrupted:
            print(
                f"degl: interrupted; checkpoint saved, continue with: degl train --resume {info.run_dir}",
                file=sys.stderr,
            )
        elif print_summary:
            from degl.cli import print_summary as show

            show(summary, Path(info.run_dir))
    return 130 if interrupted else 0


def _hard_exit(code: int) -> None:
    """Leave at once: tearing down a process group whose peers died can block for the whole timeout."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
