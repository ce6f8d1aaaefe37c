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
import shlex
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

_LAYER_FLAGS = {"rna_layer": "--rna-layer", "atac_layer": "--atac-layer", "protein_layer": "--protein-layer"}
_OBS_FLAGS = {
    "batch_key": "--batch-key",
    "size_factor_key": "--size-factor-key",
    "categorical_covariate_keys": "--categorical-covariate-keys",
    "continuous_covariate_keys": "--continuous-covariate-keys",
    "dataset_key": "--dataset-key",
}
_MODALITIES = tuple(argument.removesuffix("_layer") for argument in _LAYER_FLAGS)
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
CHECKPOINT_SUFFIX = ".checkpoint"
"""The default ``--checkpoint-dir`` is ``--model-dir`` with this suffix, a sibling folder."""

USAGE_ERROR, FAILED, INTERRUPTED = 2, 1, 130
"""Exit statuses: a bad argument (nothing was done), a failure once work started, Ctrl-C."""


class CommandError(Exception):
    """A message for the user, printed as one line ``<prog>: error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = USAGE_ERROR):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr, pointing to ``--help`` instead of printing the usage block."""

    def error(self, message: str):
        _print_line(f"{self.prog}: error: {message}; see {self.prog} --help")
        self.exit(USAGE_ERROR)


def _print_line(text: str, file=None) -> None:
    print(" ".join(str(text).split()), file=file or sys.stderr)


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
    for argument, flag in _LAYER_FLAGS.items():
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
        help="at least 1 (default: about 500 optimizer steps, at least 20 epochs and at most scvi-tools' heuristic)",
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
        _print_line(f"{prog}: {category.__name__}: {message}")

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
            return _demo(args) if args.command == "demo" else _train(args, argv)
    except CommandError as error:
        _print_line(f"{prog}: error: {error}")
        return error.status
    except KeyboardInterrupt:
        _print_line(f"{prog}: interrupted")
        return INTERRUPTED
    except Exception as error:
        if args.traceback:
            raise
        _print_line(
            f"{prog}: error: {type(error).__name__}: {error} (unexpected; rerun with --traceback to see where, and "
            "report it with that output)"
        )
        return FAILED


def _demo(args: argparse.Namespace) -> int:
    _writable_folder(Path(args.out), "--out")
    import torch

    torch.set_num_threads(args.threads)
    from pengster._demo import run_demo

    try:
        run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
    except ConnectionError as error:  # the datasets' message names PENGSTER_DATA_DIR and the fix
        raise CommandError(str(error), status=FAILED) from None
    return 0


def _writable_folder(folder: Path, flag: str) -> None:
    """Create ``folder`` (and its parents) and check that a file can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise CommandError(
            f"{flag}: cannot write to the folder {str(folder)!r} ({type(error).__name__}: {error.strerror or error}); "
            "pass a path in a folder you can write to."
        ) from None


@dataclass(frozen=True)
class _Outputs:
    out: Path
    model_dir: Path
    checkpoint_dir: Path

    @property
    def checkpoint(self) -> Path:
        from pengster.train._callbacks import LAST_CHECKPOINT

        return self.checkpoint_dir / LAST_CHECKPOINT

    @property
    def checkpoint_model(self) -> Path:
        from pengster.train._callbacks import LAST_MODEL

        return self.checkpoint_dir / LAST_MODEL


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_paths(args: argparse.Namespace) -> _Outputs:
    """Check INPUT and every output location without creating anything."""
    source = Path(args.input)
    if not source.is_file():
        raise CommandError(
            f"INPUT {args.input!r} does not exist; pass the path of an .h5mu file (written by mdata.write)."
        )
    if source.suffix == ".h5ad":
        raise CommandError(
            f"INPUT {args.input!r} is an AnnData file; pengster trains on a MuData with one modality per assay: "
            f"write one with mudata.MuData({{'rna': rna, 'atac': atac}}).write('{source.with_suffix('.h5mu')}')."
        )
    if source.suffix != ".h5mu":
        raise CommandError(
            f"INPUT {args.input!r} is not an .h5mu file; pass a MuData written by mdata.write('x.h5mu')."
        )
    out = Path(args.out)
    if out.suffix != ".h5mu":
        raise CommandError(f"--out {args.out!r}: the results are a MuData; pass a file name ending in .h5mu.")
    if out.resolve() == source.resolve():
        raise CommandError(f"--out {args.out!r} is INPUT; the input is never modified: pass a new file name.")
    if out.is_dir():
        raise CommandError(f"--out {args.out!r} is a folder; pass a file name ending in .h5mu.")
    if out.exists() and not args.overwrite:
        raise CommandError(f"--out {args.out!r} exists; pass another file name, or --overwrite to replace it.")
    parent = next((folder for folder in out.parents if folder.exists()), Path("."))
    if not parent.is_dir():
        raise CommandError(f"--out {args.out!r}: {str(parent)!r} is a file, not a folder; pass another path.")
    model_dir = Path(args.model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise CommandError(f"--model-dir {args.model_dir!r} is a file; pass a folder name.")
    if model_dir.is_dir() and any(model_dir.iterdir()) and not args.overwrite:
        raise CommandError(
            f"--model-dir {args.model_dir!r} is not empty; pass another folder, or --overwrite to replace it."
        )
    if _inside(out, model_dir) or _inside(source, model_dir):
        raise CommandError(
            f"--model-dir {args.model_dir!r} holds {'--out' if _inside(out, model_dir) else 'INPUT'}, and saving the "
            "model replaces the folder; pass a folder of its own."
        )
    if args.checkpoint_dir is None:
        checkpoint_dir = Path(f"{os.path.normpath(args.model_dir)}{CHECKPOINT_SUFFIX}")
        flag = f"--checkpoint-dir (default {str(checkpoint_dir)!r})"
    else:
        checkpoint_dir = Path(args.checkpoint_dir)
        flag = f"--checkpoint-dir {args.checkpoint_dir!r}"
    outputs = _Outputs(out, model_dir, checkpoint_dir)
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise CommandError(f"{flag} is a file; pass a folder name with --checkpoint-dir.")
    if _inside(checkpoint_dir, model_dir) or _inside(model_dir, checkpoint_dir):
        raise CommandError(f"{flag} and --model-dir overlap; pass separate folders.")
    if args.resume and not outputs.checkpoint.is_file():
        raise CommandError(
            f"--resume: {flag} holds no {outputs.checkpoint.name} to resume from; run without --resume to start "
            "training, or pass the --checkpoint-dir of the interrupted run."
        )
    if outputs.checkpoint.is_file() and not args.resume and not args.overwrite:
        raise CommandError(
            f"{flag} holds the checkpoint of an interrupted run; add --resume to continue it, or --overwrite to start "
            "over."
        )
    for modality, file_name in args.features or []:
        if not file_name.is_file():
            raise CommandError(
                f"--features {modality}={file_name}: {str(file_name)!r} does not exist; pass a text file with one "
                f"{modality} feature name per line."
            )
    return outputs


def _read_input(path: str):
    import h5py
    import mudata as md

    try:
        with h5py.File(path, "r") as file:
            is_mudata = "mod" in file
    except OSError as error:
        raise CommandError(
            f"INPUT {path!r} is not an HDF5 file ({error}); pass an .h5mu file written by mdata.write(path)."
        ) from None
    if not is_mudata:
        raise CommandError(
            f"INPUT {path!r} holds no MuData (no 'mod' group; an AnnData renamed to .h5mu?); write a MuData with "
            "mudata.MuData({'rna': rna, 'atac': atac}).write(path)."
        )
    try:
        with md.set_options(pull_on_update=False):  # mdata.obs as written in the file
            return md.read_h5mu(path)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise CommandError(
            f"INPUT {path!r} could not be read as an .h5mu file ({type(error).__name__}: {error}); write it with "
            "mdata.write(path)."
        ) from None


def _parse_modalities(text: str | None, mdata) -> dict[str, str] | None:
    if text is None:
        return None
    known = [*_LAYER_FLAGS, *_OBS_FLAGS]
    modalities = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        argument, sep, mod_key = entry.partition("=")
        if not sep or not mod_key:
            raise CommandError(
                f"--modalities {text!r}: {entry!r} is not ARG=MOD; pass e.g. "
                "--modalities rna_layer=rna,atac_layer=atac."
            )
        if argument not in known:
            raise CommandError(
                f"--modalities: unknown key {argument!r}; the keys are setup_mudata's argument names {known}, e.g. "
                "--modalities rna_layer=rna,protein_layer=prot."
            )
        if mod_key not in mdata.mod:
            raise CommandError(
                f"--modalities {argument}={mod_key}: INPUT has no modality {mod_key!r}; it has {list(mdata.mod)}."
            )
        modalities[argument] = mod_key
    if not modalities:
        raise CommandError(
            "--modalities is empty; pass e.g. --modalities rna_layer=rna,atac_layer=atac, or leave it out."
        )
    return modalities


def _check_setup_flags(args: argparse.Namespace, mdata, modalities: dict[str, str] | None) -> dict[str, str]:
    """Check the layer and obs flags against INPUT; returns pengster's modality -> INPUT's modality."""
    from pengster.data._prepare import default_modalities

    if modalities is None:
        try:
            modalities = {f"{m}_layer": key for m, key in default_modalities(mdata).items()}
        except KeyError:
            raise CommandError(
                f"INPUT's modalities {list(mdata.mod)} have none of the usual names (rna/gex, atac/peaks, "
                "prot/protein/adt); say which is which, e.g. --modalities rna_layer=<rna modality>."
            ) from None
    for argument, flag in _LAYER_FLAGS.items():
        layer = getattr(args, argument)
        if layer is None:
            continue
        if argument not in modalities:
            raise CommandError(
                f"{flag} {layer}: INPUT has no such modality; map it, e.g. --modalities {argument}=<modality>."
            )
        adata = mdata.mod[modalities[argument]]
        if layer not in adata.layers:
            raise CommandError(
                f"{flag} {layer}: INPUT's modality {modalities[argument]!r} has no layer {layer!r}; its layers are "
                f"{list(adata.layers)}; pass one of those, or leave {flag} out to use .X."
            )
    for argument, flag in _OBS_FLAGS.items():
        value = getattr(args, argument)
        keys = [value] if isinstance(value, str) else (value or [])
        mod_key = modalities.get(argument)
        obs = mdata.obs if mod_key is None else mdata.mod[mod_key].obs
        where = "INPUT's obs" if mod_key is None else f"INPUT's modality {mod_key!r}"
        for key in keys:
            if key not in obs.columns:
                raise CommandError(
                    f"{flag} {key}: {where} has no column {key!r}; columns are {list(obs.columns)[:20]}; pass one of "
                    f"those, or leave {flag} out."
                )
    return {argument.removesuffix("_layer"): key for argument, key in modalities.items() if argument in _LAYER_FLAGS}


def _read_features(args: argparse.Namespace, mdata, present: dict[str, str]) -> dict[str, list[str]]:
    """The feature names of ``--features``, checked against INPUT and ``--targets``."""
    features = {}
    for modality, file_name in args.features or []:
        flag = f"--features {modality}={file_name}"
        if modality in features:
            raise CommandError(f"{flag}: {modality} is named twice; pass one file per modality.")
        if modality not in present:
            raise CommandError(f"{flag}: INPUT has no {modality} modality; it has {list(present)}.")
        if args.targets is not None and modality not in args.targets:
            raise CommandError(
                f"{flag}: {modality} is not in --targets {','.join(args.targets)}; add it: "
                f"--targets {','.join([*args.targets, modality])}."
            )
        try:
            lines = file_name.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"{flag}: cannot read {str(file_name)!r} ({error}); pass a text file.") from None
        names = list(dict.fromkeys(name.strip() for name in lines if name.strip()))
        if not names:
            raise CommandError(f"{flag}: {str(file_name)!r} is empty; write one feature name per line.")
        var_names = mdata.mod[present[modality]].var_names
        missing = [name for name in names if name not in var_names]
        if missing:
            raise CommandError(
                f"{flag}: {len(missing)} of its {len(names)} names are not features of INPUT's modality "
                f"{present[modality]!r} (e.g. {missing[:3]}; its var_names start {list(var_names[:3])}); keep only "
                "names of that modality."
            )
        features[modality] = names
    return features


def _check_targets(args: argparse.Namespace, present: dict[str, str]) -> None:
    for modality in args.targets or []:
        if modality not in present:
            raise CommandError(
                f"--targets {','.join(args.targets)}: INPUT has no {modality} modality; pass some of "
                f"{','.join(present)}."
            )


def _check_accelerator(args: argparse.Namespace) -> None:
    if args.accelerator not in ("gpu", "cuda", "mps"):
        return
    import torch

    if args.accelerator == "mps" or (args.accelerator == "gpu" and torch.backends.mps.is_available()):
        if not torch.backends.mps.is_available():
            raise CommandError(
                "--accelerator mps: torch sees no Apple GPU here; pass --accelerator cpu, or auto to use a GPU "
                "when there is one."
            )
        return
    if not torch.cuda.is_available():
        raise CommandError(
            f"--accelerator {args.accelerator}: torch {torch.__version__} sees no CUDA GPU here "
            "(torch.cuda.is_available() is False); pass --accelerator cpu, or auto to use a GPU when there is one."
        )
    count = torch.cuda.device_count()
    wanted = args.devices if isinstance(args.devices, list) else []
    if (isinstance(args.devices, int) and args.devices > count) or any(index >= count for index in wanted):
        raise CommandError(
            f"--devices {args.devices}: this machine has {count} CUDA GPU(s) (indices 0-{count - 1}); pass a "
            "count or indices within that, or auto."
        )


def _resume_command(argv: list[str]) -> str:
    return "pengster " + shlex.join([*argv, *([] if "--resume" in argv else ["--resume"])])


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    outputs = _check_paths(args)
    mdata = _read_input(args.input)
    modalities = _parse_modalities(args.modalities, mdata)
    present = _check_setup_flags(args, mdata, modalities)
    _check_targets(args, present)
    features = _read_features(args, mdata, present)
    _check_accelerator(args)

    import pengster

    setup_kwargs = {name: getattr(args, name) for name in [*_LAYER_FLAGS, *_OBS_FLAGS]}
    with warnings.catch_warnings(record=True) as setup_warnings:  # shown only if the setup succeeds
        try:
            pengster.model.JointVAE.setup_mudata(mdata, modalities=modalities, **setup_kwargs)
        except (KeyError, ValueError, TypeError) as error:
            raise CommandError(
                f"INPUT cannot be set up with these flags: {error.args[0] if error.args else error}"
            ) from None
    for warning in setup_warnings:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if not args.resume:
        _remove_checkpoint(outputs)  # an old run's, replaced as --overwrite asked
    for folder, flag in ((outputs.out.parent, "--out"), (outputs.model_dir.parent, "--model-dir")):
        _writable_folder(folder, flag)
    _writable_folder(outputs.checkpoint_dir, "--checkpoint-dir")

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    import scvi

    scvi.settings.seed = args.seed
    model = pengster.model.JointVAE(mdata, n_latent=args.n_latent)
    targets = args.targets
    if targets is None and features:
        from pengster.tl._write import default_targets

        targets = [m for m in model.modalities if m in features or m in default_targets(model)]
    resume = {"ckpt_path": str(outputs.checkpoint)} if args.resume else {}
    try:
        model.train(
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            accelerator=args.accelerator,
            devices=args.devices,
            enable_progress_bar=args.progress_bar,
            checkpoint_dir=str(outputs.checkpoint_dir),
            **resume,
        )
    except KeyboardInterrupt:
        if outputs.checkpoint.is_file():
            _print_line(
                f"pengster train: interrupted; the last finished epoch is saved in {outputs.checkpoint}; resume with: "
                f"{_resume_command(argv)}"
            )
        else:
            _print_line("pengster train: interrupted in the first epoch, before a checkpoint; run the command again.")
        return INTERRUPTED
    except Exception as error:  # whatever stopped training, say what is kept, in one line
        if args.traceback:
            raise
        kept = (
            f"the last finished epoch is saved in {outputs.checkpoint} (continue with --resume)"
            if outputs.checkpoint.is_file()
            else "nothing was saved"
        )
        raise CommandError(f"training failed ({type(error).__name__}: {error}); {kept}.", status=FAILED) from None
    return _save_and_write(args, model, mdata, outputs, targets, features)


def _save_and_write(args, model, mdata, outputs: _Outputs, targets, features) -> int:
    """Save the trained model, then write the results; a failure says where the model is."""
    import mudata as md

    import pengster

    try:
        model.save(str(outputs.model_dir), overwrite=args.overwrite)
    except (Exception, KeyboardInterrupt) as error:  # the trained model must not be lost
        if args.traceback:
            raise
        raise CommandError(
            f"training finished, but saving the model to --model-dir {str(outputs.model_dir)!r} failed "
            f"({type(error).__name__}: {error}); the trained model of the last epoch is in "
            f"{str(outputs.checkpoint_model)!r}: load it with pengster.model.JointVAE.load, or copy that folder.",
            status=INTERRUPTED if isinstance(error, KeyboardInterrupt) else FAILED,
        ) from None
    partial = outputs.out.with_name(f".{outputs.out.name}.partial")
    try:
        written = pengster.tl.write_results(model, mdata, targets=targets, features=features or None)
        with md.set_options(pull_on_update=False):  # the results are in obsm/layers/uns; nothing to pull into obs
            mdata.write(partial)
        partial.replace(outputs.out)  # a crash never leaves a half-written results file under the final name
    except (Exception, KeyboardInterrupt) as error:  # the message must say where the model is
        partial.unlink(missing_ok=True)
        if args.traceback:
            raise
        raise CommandError(
            f"the trained model is saved in {str(outputs.model_dir)!r}, but writing the results to --out "
            f"{str(outputs.out)!r} failed ({type(error).__name__}: {error}); write them from Python with "
            f"pengster.tl.write_results(pengster.model.JointVAE.load({str(outputs.model_dir)!r}, mdata), mdata).",
            status=INTERRUPTED if isinstance(error, KeyboardInterrupt) else FAILED,
        ) from None
    _remove_checkpoint(outputs)
    print(f"saved the model to {outputs.model_dir}/ and the results to {outputs.out}")
    if isinstance(written, dict):
        print("written keys: " + ", ".join(f"{kind} {keys}" for kind, keys in written.items()))
    if targets is None and len(model.modalities) > 1 and "atac" in model.modalities and not _predicted(mdata, "atac"):
        n_peaks = mdata.mod[model.modalities["atac"]].n_vars
        print(
            f"RNA->ATAC predictions were left out: {n_peaks:,} peaks make a large cells x peaks table; pass "
            "--targets with atac to write them (and --features atac=FILE for a subset of peaks)."
        )
    return 0


def _predicted(mdata, modality: str) -> bool:
    return f"pengster_pred_{modality}" in mdata.obsm


def _remove_checkpoint(outputs: _Outputs) -> None:
    """Remove the checkpoint files (and the folder when nothing else is in it), never anything else."""
    outputs.checkpoint.unlink(missing_ok=True)
    shutil.rmtree(outputs.checkpoint_model, ignore_errors=True)
    with contextlib.suppress(OSError):
        outputs.checkpoint_dir.rmdir()


if __name__ == "__main__":
    raise SystemExit(main())
