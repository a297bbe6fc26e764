"""Models from outside the registry, by name: ``torchvision:NAME``, ``FILE.py:FUNCTION``, ``package.module:FUNCTION``.

Each name gives an ``nn.Module`` that :func:`degl.models.traced.trace_backbone` then cuts into
blocks. Weights come from the model's own initialisation (never downloaded: torchvision models are
built with ``weights=None``), drawn from torch's global generator, so seeding before building gives
every process the same weights.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from degl.errors import UserError

TORCHVISION = "torchvision:"
TORCHVISION_INPUT_SHAPE = (3, 224, 224)
"""Default input of ``torchvision:NAME`` models, that of their ImageNet weights. Models from a file or a
module have no default: their input shape must be given (``--input-shape``, or the data set's)."""


def is_external(name: str) -> bool:
    """Whether ``name`` names a model outside the registry (registry names have no colon)."""
    return ":" in name


def default_input_shape(name: str) -> tuple[int, int, int] | None:
    return TORCHVISION_INPUT_SHAPE if name.startswith(TORCHVISION) else None


def describe(name: str) -> str:
    if name.startswith(TORCHVISION):
        return f"torchvision's {name.removeprefix(TORCHVISION)}, random init, cut by tracing"
    return f"{name.rsplit(':', 1)[1]}() from {name.rsplit(':', 1)[0]}, cut by tracing"


def load_model(name: str, *, num_classes: int | None, input_shape: tuple[int, ...]) -> nn.Module:
    """Build the module ``name`` names; ``num_classes`` (when not ``None``) goes to a builder that takes it
    (a ``num_classes`` parameter, or ``**kwargs`` like torchvision's builders)."""
    if name.startswith(TORCHVISION):
        return _torchvision(name.removeprefix(TORCHVISION), num_classes, input_shape)
    builder = load_function(name, "model", forms=f"torchvision:NAME, {FUNCTION_FORMS}")
    function = name.rpartition(":")[2]
    parameters = _parameters(builder)
    required = [p.name for p in parameters.values() if p.default is p.empty and p.name != "num_classes"]
    required = [
        n
        for n in required
        if parameters[n].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise UserError(
            f"model {name!r}: {function}() needs arguments ({', '.join(required)}); degl calls it with none, "
            "or with num_classes= only"
        )
    takes_classes = "num_classes" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
    model = builder(num_classes=num_classes) if takes_classes and num_classes is not None else builder()
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r}: {function}() returned a {type(model).__name__}, not an nn.Module")
    return model


FUNCTION_FORMS = "path/to/file.py:FUNCTION or package.module:FUNCTION"


def load_function(name: str, what: str, *, forms: str = FUNCTION_FORMS) -> Callable[..., Any]:
    """The function ``path/to/file.py:FUNCTION`` or ``package.module:FUNCTION`` names.

    ``what`` names it in errors (``model``, ``objective``); ``forms``: the accepted forms, for the error.
    """
    where, _, function = name.rpartition(":")
    if not where or not function.isidentifier():
        raise UserError(f"{what} {name!r}: expected {forms}")
    looks_like_file = where.endswith(".py") or "/" in where or "\\" in where
    module = _from_file(Path(where), what) if looks_like_file else _from_module(where)
    found = getattr(module, function, None)
    if not callable(found):
        defined = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
        raise UserError(
            f"{what} {name!r}: {where} has no function {function!r} (functions there: {', '.join(defined) or 'none'})"
        )
    return found


def _torchvision(arch: str, num_classes: int | None, input_shape: tuple[int, ...]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise UserError(
            f'torchvision has no classification model {arch!r}; list them with python -c "import torchvision; '
            f'print(torchvision.models.list_models(module=torchvision.models))" (e.g. resnet18, vit_b_16)'
        )
    options: dict[str, object] = {"weights": None}
    if num_classes is not None:
        options["num_classes"] = num_classes
    if arch.startswith("vit_"):
        # ViTs size their position embedding for one square image size.
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise UserError(f"torchvision:{arch} needs square images C,S,S, got input shape {tuple(input_shape)}")
        options["image_size"] = input_shape[1]
    try:
        return torchvision.models.get_model(arch, **options)
    except (ValueError, TypeError) as exc:
        raise UserError(f"torchvision:{arch} cannot be built with {options}: {exc}") from None


def _from_file(path: Path, what: str) -> object:
    if not path.is_file():
        raise UserError(f"{what} file {str(path)!r} does not exist")
    resolved = path.resolve()
    # A stable, unique module name: the same file imports once per process, different files never clash.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = f"degl_user_model_{resolved.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:  # no loader for the suffix: not a .py file
        raise UserError(f"{what} file {str(path)!r} is not a Python file (.py); give path/to/file.py:FUNCTION")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (ImportError, SyntaxError) as exc:
        del sys.modules[module_name]
        raise UserError(f"cannot import {what} file {str(path)!r}: {type(exc).__name__}: {exc}") from None
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _from_module(dotted: str) -> object:
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        raise UserError(f"cannot import module {dotted!r} ({exc}); is it installed or on PYTHONPATH?") from None


def _parameters(function: object) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(function).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # some builtins have no signature: call them and see
        return {}
