"""The ``covidnet`` command: parses arguments, calls the Python API, prints the result.

One module per command, each with ``register(sub, flags)`` (its subparser and flags) and ``run(args)``;
what several commands print is in ``common``. A ``CovidnetError`` becomes one line on stderr and exit
status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import CovidnetError

# the command modules, in the order `covidnet --help` lists them
COMMANDS = (
    "models",
    "profile",
    "train",
    "pretrain",
    "eval",
    "predict",
    "export",
    "serve",
    "calibrate",
    "audit",
    "lungs",
    "study",
    "demo",
    "data",
)

# optional dependencies (pyproject's extras): the one line to print when a command needs one that is absent
EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "sklearn": "torch",
    "monai": "torch",
    "matplotlib": "torch",
    "imagehash": "torch",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "onnx",
    "fastapi": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "multipart": "serve",
    "starlette": "serve",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command and its flags; with ``only``, every command but only that one's flags, so that
    `covidnet models` imports neither torch (TrainConfig) nor fastapi (ServeConfig) to parse its own."""
    parser = argparse.ArgumentParser(
        prog="covidnet",
        description="COVID-Net for chest X-rays in PyTorch: a research tool, not a diagnostic device.",
    )
    parser.add_argument("--version", action="version", version=f"covidnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub, flags=only in (None, name))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the command is the first word that is not an option (before it, only --help and --version)
    parser = build_parser(only=next((a for a in argv if not a.startswith("-")), ""))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):  # a command whose extra is missing takes any
        parser.error("unrecognized arguments: " + " ".join(unknown))
    try:
        return args.func(args)
    except CovidnetError as e:
        print(f"covidnet: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise  # a bug, not a missing optional dependency
        print(
            f"covidnet: error: `covidnet {args.command}` needs {e.name}, which is not installed: "
            f"pip install 'covidnet[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("covidnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
