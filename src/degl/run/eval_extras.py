"""What ``degl eval`` does beyond scoring a run's heads: early exit, a user's images, exported files.

``degl eval --run SOURCE`` where SOURCE is a run directory or a file written by ``degl export``:

- ``--early-exit T[,T...]``: the early-exit study (table, plot, last stdout line one JSON object);
- ``--images PATH...``: the class of each image;
- an exported file alone: the test accuracy of each of its outputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from degl.errors import UserError


def add_eval_extra_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("early exit, images and exported files (--run may name a 'degl export' file)")
    group.add_argument(
        "--early-exit",
        metavar="T[,T...]",
        help="a sample leaves at the first head whose top softmax probability reaches T; per threshold: "
        "test accuracy, mean MACs per sample, the fraction leaving at each exit (an exported file: --exit all)",
    )
    group.add_argument(
        "--plot",
        metavar="FILE",
        help="--early-exit's accuracy-against-MACs figure (default: RUN/early-exit.png, or FILE-early-exit.png "
        "beside an exported file; 'none': no figure)",
    )
    group.add_argument(
        "--images", nargs="+", metavar="PATH", help="print the class of each image file / of a directory's"
    )
    group.add_argument(
        "--exit",
        metavar="K|last|ensemble",
        help="with --images and a run: which head answers: stage K's (0-based), the last or the ensemble "
        "(default: last)",
    )


def eval_extras_command(args: argparse.Namespace) -> int | None:
    """Run the extra the arguments ask for; None when they ask for plain ``degl eval`` of a run directory."""
    source = Path(args.run)
    if args.images and args.early_exit:
        raise UserError("--images and --early-exit are separate uses of 'degl eval'; give one")
    if (args.exit or args.plot) and not (args.images or args.early_exit):
        raise UserError(
            f"{'--exit' if args.exit else '--plot'} applies with {'--images' if args.exit else '--early-exit'}"
        )
    if args.images:
        from degl.run.predict import predict_images

        result = predict_images(args.run, args.images, exit_text=args.exit, data_dir=args.data_dir)
        for row in result["predictions"]:
            print(f"{row['image']}: {row['name']} (class {row['class']}, p={row['confidence']:.3f})")
        print(json.dumps(result))
        return 0
    if args.early_exit:
        if args.exit:
            raise UserError("--exit applies with --images; --early-exit uses every trained head")
        return early_exit_command(args)
    if source.is_file():
        return exported_eval_command(args)
    return None


def early_exit_command(args: argparse.Namespace) -> int:
    from degl.run.early_exit import early_exit_study, format_table, parse_thresholds, plot_study, scores_from_file

    thresholds = parse_thresholds(args.early_exit)
    source = Path(args.run)
    if source.is_file():
        exported, images, labels = exported_test_set(source, args.data_dir)
        if exported.metadata["exit_kind"] != "all":
            raise UserError(f"{source} has one output ({exported.metadata['exit']}); early exit needs --exit all")
        scores = scores_from_file(exported, images, labels)
        title = f"{exported.metadata['model']}, {exported.metadata['num_stages']} stages ({source.name})"
        default_plot = source.with_name(f"{source.stem}-early-exit.png")
    else:
        from degl.run.early_exit import scores_from_run
        from degl.run.evaluation import load_run

        run = load_run(source, device=args.device, data_dir=args.data_dir)
        scores = scores_from_run(run)
        cfg = run.setup.cfg
        title = f"{cfg.model} x{cfg.width:g}, {len(run.setup.stages)} stages, {cfg.dataset} ({source.name})"
        default_plot = source / "early-exit.png"
    result = {"run": str(source), **early_exit_study(scores, thresholds)}
    for line in format_table(result):
        print(line)
    if args.plot != "none":
        plot = Path(args.plot) if args.plot else default_plot
        plot_study(result, plot, title=title)
        print(f"wrote {plot}")
        result["plot"] = str(plot)
    print(json.dumps(result))
    return 0


def exported_test_set(path: Path, data_dir: str | None) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """An exported file and the raw test images and labels of the data set it was trained on."""
    from degl.data import load_dataset
    from degl.run.exported import load_exported

    exported = load_exported(path)
    data_meta = exported.metadata["data"]
    data = load_dataset(
        data_meta["dataset"],
        data_dir=data_dir or data_meta["data_dir"],
        input_shape=tuple(data_meta["input_shape"]),
        num_classes=data_meta["num_classes"],
        synthetic_size=data_meta["synthetic_size"],
        image_size=data_meta["image_size"],
    )
    images = getattr(data, "test_images", None)
    if images is None:
        raise UserError(f"{data_meta['dataset']} is decoded on the fly; evaluate the run directory instead")
    return exported, images, data.test_labels


def exported_eval_command(args: argparse.Namespace) -> int:
    from degl.run.early_exit import scores_from_file

    exported, images, labels = exported_test_set(Path(args.run), args.data_dir)
    scores = scores_from_file(exported, images, labels)
    accuracy = (100.0 * (scores.predicted == scores.labels[None]).double().mean(dim=1)).tolist()
    outputs = [{**output, "test_acc": acc} for output, acc in zip(exported.metadata["outputs"], accuracy)]
    for output in outputs:
        stages = ",".join(map(str, output["stages"]))
        print(f"{output['name']} (heads {stages}): test acc {output['test_acc']:.2f}%")
    print(json.dumps({"file": args.run, "outputs": outputs, "test_acc": accuracy[-1], "samples": len(labels)}))
    return 0
