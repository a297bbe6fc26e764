"""The README's examples, made runnable in examples/, really train."""

import ast
import subprocess
import sys

from conftest import REPO


def per_stage_accuracy(example: str, *args: str) -> list[float]:
    """Run ``examples/EXAMPLE`` and read its last line, ``test accuracy per stage: [a, b, ...]``."""
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / example), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1].split(":", 1)[1])


def test_own_sequential_example_trains(fmnist_dir):
    accs = per_stage_accuracy("own_sequential.py", "--train-size", "6400")
    assert len(accs) == 3 and all(acc > 50 for acc in accs)  # 10 classes: chance is 10%; 50 steps give about 70%


def test_torchvision_pipeline_example_trains_in_two_processes(fmnist_dir):
    """A torchvision ResNet-18 split in two, one stage per process, launched from Python."""
    accs = per_stage_accuracy("torchvision_pipeline.py", "--train-size", "1280")
    assert len(accs) == 2 and all(acc > 30 for acc in accs)  # 20 steps; chance is 10%
