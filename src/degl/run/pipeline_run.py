"""``degl train`` with one process per stage: build the rank loop's objects from a config.

Each rank (under ``torchrun``, or started by ``degl train --workers K`` through
:func:`degl.runtime.launch.start`) calls :func:`run_rank`: rank 0 alone reads the data and owns the
run directory and tells the others the :class:`~degl.runtime.plan.Plan`; every rank builds its
:class:`~degl.core.step.StageStep`, :class:`~degl.runtime.plan.Link` and, for async-dgl, its
replay buffer, and runs the same rank loop as ``degl.train_stage`` and ``degl bench pipeline``.
:class:`~degl.run.pipeline_record.RunRecorder` writes the checkpoints, ``metrics.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from degl.core.codecs import check_codec, parse_codec
from degl.core.parameter_error import cli_message
from degl.core.step import Precision
from degl.errors import UserError
from degl.run import checkpoint
from degl.run.config import INVOCATION_KEYS, TrainConfig, check_slowdowns, refuse_inapplicable
from degl.run.pipeline_record import RunRecorder
from degl.run.rundir import (
    check_new_run_dir,
    claim_new_run_dir,
    default_run_dir,
    discard_unused_run_dir,
    lock_run_dir,
    release_run_dir,
)
from degl.run.runstate import RunState, format_summary
from degl.run.setup import (
    buffer_options,
    configure_torch,
    load_data,
    loaders,
    make_stages,
    optim_settings,
    prepare_stage,
    resolve_cuts,
)
from degl.run.train import create_run_dir
from degl.runtime.build import PIPELINE_METHODS, make_link, make_rank, make_step
from degl.runtime.control import ProgressBoard, StepBar, draws_progress
from degl.runtime.dist import DistEnv
from degl.runtime.hooks import ProgressHooks, RankHooks
from degl.runtime.launch import PEER_FAILED, STOPPED, failures, log, setup_rank, start, watch
from degl.runtime.plan import Plan
from degl.runtime.stopping import IgnoreSignals, StopPolicy, StopRequest
from degl.runtime.sync_rank import SyncRank
from degl.runtime.trace import TRACE_FILE, TraceHooks, Tracer
from degl.runtime.transport import PeerError


def check_pipeline_config(cfg: TrainConfig, world_size: int) -> None:
    if cfg.method not in PIPELINE_METHODS:
        raise UserError(
            f"the multi-process pipeline runs --method dgl, async-dgl, dni, cdni, ddg or fr, not {cfg.method}; "
            "drop --workers to train it in one process"
        )
    if cfg.stages != world_size:
        raise UserError(f"{world_size} processes but --stages {cfg.stages}: the pipeline runs one stage per process")
    refuse_inapplicable(cfg, processes=world_size)  # under torchrun --workers is not set


@dataclass
class PipelineInfo:
    """What rank 0 tells every rank at start-up (it alone reads the data)."""

    plan: Plan
    input_shape: tuple[int, int, int]
    run_dir: str
    cuts: tuple[int, ...]
    """Where stages 1..K-1 begin (block indices), as rank 0 found them."""
    recorded_cuts: tuple[int, ...] | None
    """``--cuts`` as the run records it (a measured ``--split time`` cut is recorded)."""


def prepare_first_rank(cfg: TrainConfig, world_size: int, resume_dir: Path | None) -> tuple[PipelineInfo, Any]:
    """Rank 0 alone reads the data and owns the run directory; everything a user can get wrong fails here."""
    check_pipeline_config(cfg, world_size)
    if resume_dir is not None:
        _, meta = checkpoint.load_meta(resume_dir)
        if parse_codec(cfg.codec).stateful and meta["position"]["phase"] < 1:
            raise UserError(
                f"--codec {cfg.codec} keeps state (codebook, random stream) that multi-process runs do not "
                "checkpoint, so the pipeline cannot continue this run exactly: resume it in one process "
                "(--workers 1) if it was trained in one, or start a new run"
            )
        if cfg.method == "async-dgl" and meta["position"]["phase"] < 1:
            raise UserError(
                f"{resume_dir} is a stopped multi-process async-dgl run; its buffers and in-flight messages are "
                "not checkpointed, so it cannot be resumed: start a new run (or evaluate it with degl eval)"
            )
        run_dir = resume_dir
        lock_run_dir(run_dir)
    else:
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.method, cfg.model)
        check_new_run_dir(run_dir)
    data = load_data(cfg)
    cfg = resolve_cuts(cfg, data)
    # Model, K and aux errors surface here, before anything is written; the cut found is sent to
    # every rank, which then builds its stages without measuring the blocks again.
    with torch.random.fork_rng():
        stages = make_stages(cfg, data)
    check_codec(cfg.codec, [stage.out_shape for stage in stages[:-1]])
    check_codec(cfg.buffer_codec, [stage.out_shape for stage in stages[:-1]], flag="--buffer-codec")
    train_loader, test_loader = data.loaders(
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        device=torch.device("cpu"),
        augment=False,
        seed=cfg.seed,
    )
    if resume_dir is None:
        run_dir = create_run_dir(cfg, run_dir)
    plan = Plan(
        tuple(train_loader.batch_sizes()),
        tuple(test_loader.batch_sizes()),
        data.num_classes,
        cfg.epochs,
        cfg.precision,
        codec=cfg.codec,
        codec_seed=cfg.seed,
    )
    cuts = tuple(stage.block_indices[0] for stage in stages[1:])
    return PipelineInfo(plan, tuple(data.input_shape), str(run_dir), cuts, cfg.cuts), data


def build_rank(
    cfg: TrainConfig, env: DistEnv, info: PipelineInfo, data: Any, board: ProgressBoard | None = None
) -> tuple[SyncRank, RunRecorder, Tracer | None]:
    """This rank's loop, its recorder and its tracer (``--trace``), from the config and rank 0's
    :class:`PipelineInfo`.

    ``board``: the local ranks' shared progress figures (``--workers K``), for rank 0's progress bar.
    """
    device, plan = env.device, info.plan
    # Rank 0's cut, as block indices: no cost measurement (FLOPs counting alone takes ~2 s to warm up).
    explicit = replace(cfg, cuts=info.cuts, split_at=None, split="blocks")
    stages = make_stages(explicit, SimpleNamespace(input_shape=info.input_shape, num_classes=plan.num_classes))
    stage = prepare_stage(stages[env.rank], cfg, device)
    del stages
    settings = optim_settings(cfg, plan.steps_per_epoch)
    precision = Precision(
        cfg.precision, device, init_scale=cfg.loss_scale_init, growth_interval=cfg.loss_scale_growth_interval
    )
    step = make_step(
        cfg.method,
        stage,
        num_stages=env.world_size,
        num_classes=plan.num_classes,
        make_optimizer=settings.make_optimizer,
        make_scheduler=settings.make_scheduler,
        seed=cfg.seed,
        precision=precision,
        device=device,
        reset_at_decay=cfg.reset_at_decay,
    )
    link = make_link(cfg.method, env.rank, env.world_size, device, max_in_flight=cfg.max_in_flight)
    state = None
    describe = RunState.describe_stages([stage])[0]
    if env.is_first:
        stage_info: list[Any] = [None] * env.world_size
        dist.gather_object(describe, stage_info, dst=0)
        state = RunState(cfg, Path(info.run_dir), stage_info, str(device), extra={"workers": env.world_size})
        train_loader, test_loader = loaders(cfg, data, device)
    else:
        dist.gather_object(describe, None, dst=0)
        train_loader = test_loader = None
    recorder = RunRecorder(cfg, Path(info.run_dir), state)
    options: dict[str, Any] = {
        "rank": env.rank,
        "world": env.world_size,
        "train_batches": train_loader,
        "test_batches": test_loader,
        "recorder": recorder,
        "slowdown": check_slowdowns(cfg.slowdown, env.world_size).get(env.rank, 1.0),
        "progress": cfg.progress if env.is_first else False,
        "board": board if draws_progress(cfg.progress) else None,
    }
    asynchronous = cfg.method == "async-dgl" and cfg.buffer > 0  # --buffer 0: the synchronous pipeline
    tracer = Tracer(env.rank) if cfg.trace else None
    hooks: list[RankHooks] = [TraceHooks(tracer)] if tracer is not None else []
    step_bar = None
    if asynchronous and draws_progress(cfg.progress) and env.is_first:  # the asynchronous loop draws no bar of its own
        total = plan.epochs * plan.steps_per_epoch
        step_bar = StepBar(
            min(total, cfg.max_steps or total), plan.train_sizes[0], options["board"], enabled=cfg.progress
        )
    if options["board"] is not None or step_bar is not None:
        hooks.append(ProgressHooks(options["board"], step_bar))
    rank = make_rank(
        cfg.method,
        step,
        link,
        plan,
        buffers=buffer_options(cfg) if asynchronous else None,
        seed=cfg.seed,
        queue_depth=cfg.max_in_flight,
        timeout_s=cfg.fault_timeout,
        hooks=hooks,
        **options,
    )
    return rank, recorder, tracer


def _fingerprint(cfg: TrainConfig) -> str:
    # --trace may change between invocations but not between ranks: tracing ranks meet in collectives.
    return repr((sorted((k, v) for k, v in cfg.to_dict().items() if k not in INVOCATION_KEYS), cfg.trace))


def _agree(env: DistEnv, problem: str | None) -> str | None:
    """Every rank learns the first problem any rank had (None if none)."""
    problems: list[Any] = [None] * env.world_size
    dist.all_gather_object(problems, problem)
    return next((p for p in problems if p), None)


def _quit(env: DistEnv, message: str | None, code: int) -> int:
    if env.is_first and message:
        print(message, file=sys.stderr)
    dist.destroy_process_group()
    return code


def run_rank(cfg: TrainConfig, resume_dir: Path | None, print_summary: bool, board: ProgressBoard | None = None) -> int:
    """Run this process's stage to the end; return the exit status (0, 2 user error, 130 stopped)."""
    configure_torch(replace(cfg, threads=None))
    env = setup_rank(threads=cfg.threads, pin=cfg.pin_cpus, device=cfg.device, timeout_s=cfg.fault_timeout)
    try:
        shared: list[Any] = [None]
        data = None
        if env.is_first:
            try:
                info, data = prepare_first_rank(cfg, env.world_size, resume_dir)
                shared = [info]
            except UserError as exc:
                shared = [cli_message(exc)]
        dist.broadcast_object_list(shared, src=0)
        if isinstance(shared[0], str):
            return _quit(env, f"degl: error: {shared[0]}", 2)
        info: PipelineInfo = shared[0]
        if len(_gather_prints(env, cfg)) > 1:
            return _quit(
                env,
                "degl: error: the ranks were started with different options; start them all with the same command line",
                2,
            )
        rank, recorder, tracer = build_rank(replace(cfg, cuts=info.recorded_cuts), env, info, data, board)
        if resume_dir is not None:
            problem = None
            try:
                path, meta = checkpoint.load_meta(resume_dir)
                with checkpoint.restoring(path):
                    rank.restore(checkpoint.load_stage(path, env.rank, env.device), meta)
                    if recorder.state is not None:
                        recorder.state.restore(meta)
            except UserError as exc:
                problem = f"rank {env.rank}: cannot resume from {resume_dir}: {cli_message(exc)}"
            problem = _agree(env, problem)
            if problem:
                return _quit(env, f"degl: error: {problem}", 2)
            if rank.position.phase >= 1:
                return _quit(env, f"degl: {resume_dir} is already complete ({rank.global_step} steps)", 0)
        message = "stopping the pipeline after this step and writing a checkpoint"
        if tracer is not None:
            tracer.start()  # a barrier: the ranks' common time origin
        with StopRequest(message) if env.is_first else IgnoreSignals() as stop:
            stopped = rank.fit(StopPolicy(cfg.max_steps, stop))
        interrupted = stopped and stop.requested
        if tracer is not None:
            trace = tracer.gather(env.world_size)
            if trace is not None:
                text = json.dumps(trace, separators=(",", ":"))
                checkpoint.atomic_write_bytes(Path(info.run_dir) / TRACE_FILE, text.encode())
        dist.destroy_process_group()
    except PeerError as exc:
        log(env.rank, f"error: {exc}")
        return PEER_FAILED
    except UserError as exc:
        log(env.rank, f"error: {cli_message(exc)}")
        return 2
    except KeyboardInterrupt:
        log(env.rank, "aborted")
        return STOPPED
    except Exception:
        log(env.rank, "internal error:\n" + traceback.format_exc())
        return 1
    if env.is_first and recorder.summary is not None:
        if interrupted:
            # A stopped multi-process async-dgl run cannot be resumed (its buffers are not checkpointed).
            hint = (
                f"evaluate it with: degl eval --run {info.run_dir}"
                if cfg.method == "async-dgl"
                else f"continue with: degl train --resume {info.run_dir}"
            )
            print(f"degl: interrupted; checkpoint saved, {hint}", file=sys.stderr)
        elif print_summary:
            for line in format_summary(recorder.summary, Path(info.run_dir)):
                print(line)
    return STOPPED if interrupted else 0


def _gather_prints(env: DistEnv, cfg: TrainConfig) -> set[str]:
    prints: list[Any] = [None] * env.world_size
    dist.all_gather_object(prints, _fingerprint(cfg))
    return set(prints)


def launch_local(cfg: TrainConfig, *, resume_dir: Path | None) -> int:
    """``degl train --workers K``: run the pipeline as K local processes; return the exit status."""
    num = cfg.workers or 1
    check_pipeline_config(cfg, num)
    if resume_dir is None:
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.method, cfg.model)
        check_new_run_dir(run_dir)
        # Claimed here, before the ranks start: they inherit the lock, and a run given the same --out
        # at the same time is refused before either writes anything.
        run_dir = claim_new_run_dir(run_dir, default=not cfg.out)
        cfg = replace(cfg, out=str(run_dir))
    else:
        run_dir = resume_dir
        lock_run_dir(run_dir)
    # This process has only parsed the command line (no torch computation): forking is safe and saves
    # each rank importing torch again.
    board = ProgressBoard(num) if draws_progress(cfg.progress) else None  # shared memory, inherited by the forked ranks
    try:
        codes = watch(start(run_rank, num, (cfg, resume_dir, False, board), start_method="fork"), cfg.fault_timeout)
    finally:
        release_run_dir(run_dir)
    problem = failures(codes)
    if resume_dir is None and codes[0] == 2:
        discard_unused_run_dir(run_dir)  # bad input found by rank 0: leave no empty run behind
    if problem is not None:
        print(f"degl: error: {problem}", file=sys.stderr)
        return 1
    if 2 in codes:  # a user error on some rank (bad input, a diverged stage): it printed the line
        return 2
    if codes[0] == STOPPED:
        return codes[0]
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        import json

        for line in format_summary(json.loads(summary_path.read_text()), run_dir):
            print(line)
    return 0
