"""The Python API reads like Python: named parameters, errors in Python's words, bars only on a
terminal, and docs/python-api.md's examples run."""

from __future__ import annotations

import fcntl
import inspect
import os
import pickle
import pty
import pydoc
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import degl
from conftest import REPO, fashion_mnist_dir
from degl.core.method_base import Method
from degl.core.parameter_error import ParameterError, cli_message
from degl.core.split import split_blocks

METHOD_PARAMETERS = [
    "make_optimizer",
    "make_scheduler",
    "precision",
    "device",
    "reset_at_decay",
    "loss_scale_init",
    "loss_scale_growth_interval",
    "loss_fn",
    "codec",
    "codec_seed",
]
PUBLIC_METHODS = [degl.DGL, degl.SequentialGreedy, degl.Backprop, degl.GradientMethod]


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def tiny_stages(num_stages: int = 2) -> list[degl.Stage]:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    return degl.build_stages(net, num_stages, aux="linear", input_shape=(1, 6, 6), num_classes=3)


# ---------------------------------------------------------------- 1. every parameter has a name


@pytest.mark.parametrize("cls", PUBLIC_METHODS, ids=lambda cls: cls.__name__)
def test_method_constructors_name_every_parameter_with_the_base_defaults(cls):
    signature = inspect.signature(cls)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()), signature
    base = inspect.signature(Method).parameters
    for name in METHOD_PARAMETERS:
        parameter = signature.parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default == base[name].default, name
        assert parameter.annotation != inspect.Parameter.empty, name
    if cls is degl.GradientMethod:
        assert signature.parameters["method"].default is inspect.Parameter.empty  # required, like make_optimizer
    assert signature.parameters["make_optimizer"].default is inspect.Parameter.empty


@pytest.mark.parametrize("cls", PUBLIC_METHODS, ids=lambda cls: cls.__name__)
def test_help_documents_every_parameter(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for name in METHOD_PARAMETERS:
        # pydoc draws the class's docstrings behind " |  " margins
        assert re.search(rf"^[ |]+{name}: \S", text, re.M), f"help({cls.__name__}) does not explain {name}"


def test_named_parameters_reach_the_method():
    seen = []

    def loss_fn(logits, target):
        seen.append(logits.shape)
        return nn.functional.cross_entropy(logits, target)

    dgl = degl.DGL(tiny_stages(), make_optimizer=sgd, loss_fn=loss_fn, device="cpu", reset_at_decay=True)
    dgl.train_step(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0]))
    assert len(seen) == 2 and dgl.reset_at_decay and dgl.device == torch.device("cpu")


# ---------------------------------------------------------------- 2. errors in Python's words


def test_split_errors_name_the_python_parameters():
    with pytest.raises(ParameterError) as too_many:
        split_blocks(3, 4)
    assert str(too_many.value) == "num_stages=4 is more than the network's 3 blocks; use at most 3"
    assert too_many.value.parameter == "num_stages" and isinstance(too_many.value, ValueError)
    with pytest.raises(ParameterError, match=r"^num_stages must be at least 1, got 0$"):
        split_blocks(3, 0)
    with pytest.raises(ParameterError, match=r"^cuts must be strictly increasing .* got \[3, 1\]$") as cuts:
        split_blocks(6, 3, cuts=[3, 1])
    assert cuts.value.parameter == "cuts"
    with pytest.raises(ParameterError, match=r"^cuts needs 2 indices for 3 stages, got 1: \[2\]$"):
        split_blocks(6, 3, cuts=[2])
    for error in (too_many.value, cuts.value):
        assert "--" not in str(error)


def test_build_stages_and_methods_speak_python():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    shape = {"input_shape": (1, 6, 6), "num_classes": 3}
    with pytest.raises(ParameterError, match=r"^num_stages=5 is more than the network's 4 blocks"):
        degl.build_stages(net, 5, **shape)
    with pytest.raises(ParameterError, match=r"^give either cuts \(block indices\) or split_at"):
        degl.build_stages(net, cuts=[2], split_at=["2"], **shape)
    with pytest.raises(ParameterError, match=r"^unknown split 'fastest'"):
        degl.build_stages(net, 2, split="fastest", **shape)
    with pytest.raises(ParameterError, match=r"^codec='int8' applies to the methods dgl and async-dgl, not to method="):
        degl.GradientMethod(tiny_stages(), method="ddg", make_optimizer=sgd, codec="int8")
    with pytest.raises(ParameterError, match=r"^method='fr' runs in fp32 or bf16, not precision='fp16'"):
        degl.GradientMethod(tiny_stages(), method="fr", make_optimizer=sgd, precision="fp16")


def test_the_cli_gets_the_same_errors_in_flag_names():
    with pytest.raises(ParameterError) as too_many:
        split_blocks(3, 4)
    assert cli_message(too_many.value) == "--stages 4 is more than the network's 3 blocks; use at most 3"
    with pytest.raises(ParameterError) as cuts:
        split_blocks(6, 3, cuts=[2, 1])
    assert cli_message(cuts.value) == "--cuts must be strictly increasing block indices between 1 and 5, got 2,1"
    with pytest.raises(ParameterError) as codec:
        degl.GradientMethod(tiny_stages(), method="dni", make_optimizer=sgd, codec="int8")
    assert cli_message(codec.value) == "--codec int8 applies to the methods dgl and async-dgl, not to --method dni"
    assert cli_message(degl.UserError("anything else")) == "anything else"


def test_a_parameter_error_crosses_processes_intact():
    """A pipeline rank's error reaches rank 0 pickled; it must still speak either interface."""
    error = ParameterError("{cuts} must be increasing, got {cuts!v}", cuts=[3, 1])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ParameterError and str(copy) == str(error) == "cuts must be increasing, got [3, 1]"
    assert copy.cli_text() == "--cuts must be increasing, got 3,1" and copy.parameter == "cuts"


def test_a_template_naming_a_parameter_without_its_value_is_a_bug():
    with pytest.raises(TypeError, match="num_stages"):
        ParameterError("{num_stages} is wrong")


# ---------------------------------------------------------------- 3. progress bars on terminals only

DRAW_BARS = """
import sys
from degl.runtime.control import StepBar, progress_bar

enabled = {"auto": None, "on": True, "off": False}[sys.argv[1]]
with progress_bar(5, 0, "epochs", enabled=enabled, unit="ep") as bar:
    for _ in range(5):
        bar.update(1)
steps = StepBar(20, 8, None, enabled=enabled)
for step in range(1, 21):
    steps.step(step)
steps.close()
print("done", file=sys.stderr)
"""


def draw_bars_to_a_pipe(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", DRAW_BARS, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stderr


def draw_bars_to_a_terminal(mode: str) -> str:
    """Run the script with stderr (and stdout) on a pseudo-terminal; return what it wrote there."""
    controller, terminal = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and tqdm fits its bar into that: give it 80.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-c", DRAW_BARS, mode], stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal is closed once the process has exited (EIO on Linux)
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(timeout=30) == 0, output
    return output.decode(errors="replace")


def test_no_progress_bar_is_drawn_into_a_pipe_by_default():
    err = draw_bars_to_a_pipe("auto")
    assert err == "done\n", repr(err)  # no bar, no carriage return, no escape code


def test_bars_are_drawn_on_a_terminal_by_default():
    out = draw_bars_to_a_terminal("auto")
    assert "\r" in out and "epochs: 100%" in out and "async-dgl steps: 100%" in out, repr(out)


def test_explicit_flags_still_decide():
    assert "epochs: 100%" in draw_bars_to_a_pipe("on")  # asked for: drawn even into a log
    assert "epochs" not in draw_bars_to_a_terminal("off")


# ---------------------------------------------------------------- 4. the documentation's examples run


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)


def test_python_api_page_examples_run(tmp_path):
    """Each ```python block of docs/python-api.md, as a script, with its data found through DEGL_DATA_DIR."""
    found = fashion_mnist_dir()
    if found is None:
        pytest.skip("Fashion-MNIST is not installed; 'make install' installs Debian's dataset-fashion-mnist")
    data_root = tmp_path / "datasets"
    data_root.mkdir()
    (data_root / "fashion-mnist").symlink_to(found, target_is_directory=True)
    blocks = python_blocks(REPO / "docs" / "python-api.md")
    assert len(blocks) == 2
    # One thread per process: the examples are small and the test machine's cores are shared.
    env = {**os.environ, "DEGL_DATA_DIR": str(data_root), "OMP_NUM_THREADS": "1"}
    outputs = []
    for index, code in enumerate(blocks):
        script = tmp_path / f"example_{index}.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    for output in outputs:
        accuracies = re.search(r"test accuracy per stage: \[(.*)\]", output)
        assert accuracies, output
        assert len([float(a) for a in accuracies.group(1).split(",")]) == 2
    # the pipeline example printed one line per epoch and rank from the history
    epoch_rank = re.findall(r"^(\d) (\d) [\d.]+ \d+% idle$", outputs[1], re.M)
    assert epoch_rank == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]


def test_the_documented_error_is_the_real_one():
    page = (REPO / "docs" / "python-api.md").read_text()
    model = degl.build_model("cnn4", width=0.25, input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ParameterError) as error:
        degl.build_stages(model, num_stages=9)
    assert f"ParameterError: {error.value}" in page
    assert f"`{cli_message(error.value).split(' is ')[0]} is more than ...`" in page
