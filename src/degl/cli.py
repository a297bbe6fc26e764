"""``degl`` command line: parse and dispatch. Errors a user can cause exit 2 with one line.

Each command's arguments and work live in its layer (``degl.run.*_command``, ``degl.run.export``,
``degl.bench``); this module builds the parser from them and turns user errors into
``degl: error: ...`` lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from degl.core.parameter_error import cli_message
from degl.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(2, f"degl: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> ArgumentParser:
    from degl.bench import add_bench_parsers
    from degl.run.export import add_export_arguments, export_command
    from degl.run.inspect_commands import add_eval_parser, add_plot_parser, add_trace_parser
    from degl.run.models_command import add_models_parser
    from degl.run.train_command import add_compare_parser, add_train_parser

    parser = ArgumentParser(prog="degl", description="Decoupled Greedy Learning of deep networks.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    add_train_parser(commands)
    add_compare_parser(commands)
    add_eval_parser(commands)
    export = commands.add_parser("export", help="write a run's network as one ONNX, pt2 or state-dict file")
    add_export_arguments(export)
    export.set_defaults(command_func=export_command)
    add_models_parser(commands)
    add_plot_parser(commands)
    add_trace_parser(commands)
    bench = commands.add_parser("bench", help="benchmarks (last stdout line is one JSON object)")
    add_bench_parsers(bench)
    bench.set_defaults(command_func=lambda args: args.bench_func(args))
    return parser


def _version() -> str:
    import degl

    return f"degl {degl.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own errors (already printed)
        return int(exc.code or 0)
    if getattr(args, "command_func", None) is None:  # no command given
        parser.print_help()
        return 2
    try:
        return args.command_func(args)
    except UserError as exc:
        print(f"degl: error: {cli_message(exc)}", file=sys.stderr)  # a Python parameter named as its flag
        return 2
    except KeyboardInterrupt:
        print("degl: aborted", file=sys.stderr)
        return 130
    except Exception as exc:
        from degl.run.control import Interrupted

        if isinstance(exc, Interrupted):
            print(f"degl: {exc}", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    raise SystemExit(main())
