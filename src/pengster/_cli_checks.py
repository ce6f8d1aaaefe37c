"""What ``pengster train`` checks before it does anything: the flags, INPUT and every output location.

Each check raises ``CommandError``, which the command prints as one line ``<prog>: error: <message>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LAYER_FLAGS = {"rna_layer": "--rna-layer", "atac_layer": "--atac-layer", "protein_layer": "--protein-layer"}
OBS_FLAGS = {
    "batch_key": "--batch-key",
    "size_factor_key": "--size-factor-key",
    "categorical_covariate_keys": "--categorical-covariate-keys",
    "continuous_covariate_keys": "--continuous-covariate-keys",
    "dataset_key": "--dataset-key",
}
CHECKPOINT_SUFFIX = ".checkpoint"
"""The default ``--checkpoint-dir`` is ``--model-dir`` with this suffix, a sibling folder."""

USAGE_ERROR, FAILED, INTERRUPTED = 2, 1, 130
"""Exit statuses: a bad argument (nothing was done), a failure once work started, Ctrl-C."""


class CommandError(Exception):
    """A message for the user, printed as one line ``<prog>: error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = USAGE_ERROR):
        super().__init__(message)
        self.status = status


def print_line(text: str, file=None) -> None:
    print(" ".join(str(text).split()), file=file or sys.stderr)


def writable_folder(folder: Path, flag: str) -> None:
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
class Outputs:
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


def check_paths(args: argparse.Namespace) -> Outputs:
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
    outputs = Outputs(out, model_dir, checkpoint_dir)
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


def read_input(path: str):
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


def parse_modalities(text: str | None, mdata) -> dict[str, str] | None:
    if text is None:
        return None
    known = [*LAYER_FLAGS, *OBS_FLAGS]
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


def check_setup_flags(args: argparse.Namespace, mdata, modalities: dict[str, str] | None) -> dict[str, str]:
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
    for argument, flag in LAYER_FLAGS.items():
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
    for argument, flag in OBS_FLAGS.items():
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
    return {argument.removesuffix("_layer"): key for argument, key in modalities.items() if argument in LAYER_FLAGS}


def read_features(args: argparse.Namespace, mdata, present: dict[str, str]) -> dict[str, list[str]]:
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


def check_targets(args: argparse.Namespace, present: dict[str, str]) -> None:
    for modality in args.targets or []:
        if modality not in present:
            raise CommandError(
                f"--targets {','.join(args.targets)}: INPUT has no {modality} modality; pass some of "
                f"{','.join(present)}."
            )


def check_accelerator(args: argparse.Namespace) -> None:
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
