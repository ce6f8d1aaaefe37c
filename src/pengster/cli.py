"""Command line: ``pengster demo`` and ``pengster train``.

Every mistake in the arguments ends with exit status 2 and one line on stderr naming the flag and the fix; nothing is
trained or written before all of them are checked. Once training starts, no failure loses the work: Ctrl-C leaves a
checkpoint to resume from (exit status 130), and a failure after training says where the trained model is (1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from pengster._cli_checks import (
    CHECKPOINT_SUFFIX,
    FAILED,
    INTERRUPTED,
    LAYER_FLAGS,
    USAGE_ERROR,
    CommandError,
    print_line,
    writable_folder,
)
from pengster._cli_train import run_train

_MODALITIES = tuple(argument.removesuffix("_layer") for argument in LAYER_FLAGS)
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr, pointing to ``--help`` instead of printing the usage block."""

    def error(self, message: str):
        print_line(f"{self.prog}: error: {message}; see {self.prog} --help")
        self.exit(USAGE_ERROR)


def _version() -> str:
    try:
        return metadata.version("pengster")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; pass e.g. 200") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1; pass a whole number of at least 1, e.g. 200")
    return value


def _key_list(text: str) -> list[str]:
    return [key.strip() for key in text.split(",") if key.strip()]


def _targets(text: str) -> list[str]:
    targets = _key_list(text)
    unknown = [name for name in targets if name not in _MODALITIES]
    if unknown or not targets:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {unknown[0] if unknown else 'nothing'} is not a modality; pass pengster's modality names "
            f"separated by commas, some of {','.join(_MODALITIES)}"
        )
    return list(dict.fromkeys(targets))


def _features(text: str) -> tuple[str, Path]:
    modality, sep, file_name = text.partition("=")
    if not sep or not file_name or modality not in _MODALITIES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODALITY=FILE with MODALITY one of {', '.join(_MODALITIES)}; pass e.g. "
            "--features atac=peaks.txt (one feature name per line)"
        )
    return modality, Path(file_name)


def _devices(text: str) -> str | int | list[int]:
    """Lightning's devices: 'auto', '2' a count, '0,1' a list of device indices."""
    try:
        if text == "auto":
            return text
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}; pass auto, a count such as 1, or device indices such as 0,1"
        ) from None
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"{text}; pass auto, a count of at least 1 (-1: all), or indices such as 0,1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pengster", description="Multimodal single-cell integration.")
    parser.add_argument("--version", action="version", version=f"pengster {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,train}")
    demo = commands.add_parser(
        "demo",
        help="train on the real BMMC multiome + CITE-seq mosaic and score it",
        description=(
            "Train on the BMMC multiome + CITE-seq mosaic and score its held-out predictions. The data are read "
            "from $PENGSTER_DATA_DIR when it holds them, else downloaded (network needed)."
        ),
    )
    demo.add_argument("--out", default="demo_output", help="output folder (created)")
    demo.add_argument("--max-epochs", type=_positive_int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=_positive_int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))

    train = commands.add_parser(
        "train",
        help="train JointVAE on an .h5mu file, save the model and write the results to a new .h5mu",
        description=(
            "Train pengster.model.JointVAE on INPUT (an .h5mu file), save the model to --model-dir and write the "
            "results (pengster.tl.write_results) to --out, a new .h5mu file. The setup flags are the arguments of "
            "JointVAE.setup_mudata. Every flag and output location is checked before training starts. After every "
            "epoch a checkpoint is written to --checkpoint-dir; after Ctrl-C (exit status 130) the same command "
            "with --resume continues from it. A failure after training (exit status 1) says where the model is."
        ),
        epilog=(
            "example: pengster train mosaic.h5mu --out results/mosaic.h5mu --model-dir model --rna-layer counts "
            "--atac-layer counts --batch-key batch --modalities rna_layer=rna,atac_layer=atac --max-epochs 200"
        ),
    )
    train.add_argument("input", metavar="INPUT", help="the MuData to train on (.h5mu); it is not modified")
    outputs = train.add_argument_group("outputs")
    outputs.add_argument(
        "--out", required=True, help="new .h5mu file for the results; a missing parent folder is created"
    )
    outputs.add_argument(
        "--model-dir", required=True, help="folder to save the trained model to (JointVAE.load); must be new or empty"
    )
    outputs.add_argument(
        "--checkpoint-dir",
        help=f"folder of the checkpoint written after every epoch (default: MODEL_DIR{CHECKPOINT_SUFFIX}); its "
        "checkpoint files are removed once the model and the results are written",
    )
    outputs.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose checkpoint is in --checkpoint-dir (give the same other arguments)",
    )
    outputs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out and --model-dir if they exist, and start over from an old checkpoint unless --resume",
    )
    outputs.add_argument(
        "--targets",
        type=_targets,
        metavar="MOD,...",
        help=f"modalities to predict and denoise, some of {','.join(_MODALITIES)} (default: all, except atac "
        "with more than 10,000 peaks)",
    )
    outputs.add_argument(
        "--features",
        type=_features,
        action="append",
        metavar="MOD=FILE",
        help="predict only these features of a modality: FILE holds one feature name per line (e.g. --features "
        "atac=peaks.txt); repeat for other modalities; a modality named here is predicted even when the default "
        "targets leave it out, and gets no denoised layer",
    )
    setup = train.add_argument_group("setup (JointVAE.setup_mudata)")
    for argument, flag in LAYER_FLAGS.items():
        setup.add_argument(flag, dest=argument, metavar="LAYER", help=f"counts layer ({argument}); default .X")
    setup.add_argument(
        "--modalities",
        metavar="ARG=MOD,...",
        help="setup argument -> modality of INPUT, e.g. rna_layer=rna,atac_layer=atac,batch_key=rna "
        "(default: the usual modality names rna/gex, atac/peaks, prot/protein/adt)",
    )
    setup.add_argument("--batch-key", help="obs column with each cell's batch")
    setup.add_argument("--size-factor-key", help="obs column with each cell's RNA library size")
    setup.add_argument("--categorical-covariate-keys", type=_key_list, metavar="KEY,...", help="obs columns")
    setup.add_argument("--continuous-covariate-keys", type=_key_list, metavar="KEY,...", help="obs columns")
    setup.add_argument("--dataset-key", help="obs column naming each cell's dataset (default: 'dataset' if present)")
    fit = train.add_argument_group("model and training")
    fit.add_argument("--n-latent", type=_positive_int, default=20)
    fit.add_argument(
        "--max-epochs",
        type=_positive_int,
        help="at least 1 (default: scvi-tools' heuristic as a cap; early stopping on the validation loss ends it)",
    )
    fit.add_argument("--batch-size", type=_positive_int, help="cells per minibatch (default: chosen from the data)")
    fit.add_argument(
        "--accelerator", default="auto", choices=_ACCELERATORS, help="gpu/cuda/mps need that device (default: auto)"
    )
    fit.add_argument(
        "--devices", type=_devices, default="auto", help="Lightning devices: auto, a count, or a list such as 0,1"
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    fit.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    for command in (demo, train):
        command.add_argument(
            "--traceback", action="store_true", help="show the Python traceback of an unexpected error (for reports)"
        )
    return parser


@contextlib.contextmanager
def _application_output(prog: str) -> Iterator[None]:
    """For the command only: each warning as one line, and Lightning's INFO lines (seed, fit stopped) hidden.

    The settings are put back on exit, so that ``main`` called from Python leaves the process as it found it.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]

    def show(message, category, filename, lineno, file=None, line=None):
        print_line(f"{prog}: {category.__name__}: {message}")

    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the ``pengster`` command line; returns the exit status (argparse's own errors exit with 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    prog = f"pengster {args.command}"
    try:
        with _application_output(prog):
            return _demo(args) if args.command == "demo" else run_train(args, argv)
    except CommandError as error:
        print_line(f"{prog}: error: {error}")
        return error.status
    except KeyboardInterrupt:
        print_line(f"{prog}: interrupted")
        return INTERRUPTED
    except Exception as error:
        if args.traceback:
            raise
        print_line(
            f"{prog}: error: {type(error).__name__}: {error} (unexpected; rerun with --traceback to see where, and "
            "report it with that output)"
        )
        return FAILED


def _demo(args: argparse.Namespace) -> int:
    writable_folder(Path(args.out), "--out")
    import torch

    torch.set_num_threads(args.threads)
    from pengster._demo import run_demo

    try:
        run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
    except ConnectionError as error:  # the datasets' message names PENGSTER_DATA_DIR and the fix
        raise CommandError(str(error), status=FAILED) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
