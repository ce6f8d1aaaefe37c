"""Command line: ``pengster demo`` and ``pengster train``."""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

_LAYER_FLAGS = {"rna_layer": "--rna-layer", "atac_layer": "--atac-layer", "protein_layer": "--protein-layer"}
_OBS_FLAGS = {
    "batch_key": "--batch-key",
    "size_factor_key": "--size-factor-key",
    "categorical_covariate_keys": "--categorical-covariate-keys",
    "continuous_covariate_keys": "--continuous-covariate-keys",
    "dataset_key": "--dataset-key",
}
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; pass e.g. 200") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _key_list(text: str) -> list[str]:
    return [key.strip() for key in text.split(",") if key.strip()]


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``pengster`` parser and its ``train`` subparser (whose ``error`` names the subcommand)."""
    parser = argparse.ArgumentParser(prog="pengster", description="Multimodal single-cell integration.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train on the real BMMC multiome + CITE-seq mosaic and score it")
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--max-epochs", type=_positive_int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=_positive_int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))

    train = commands.add_parser(
        "train",
        help="train JointVAE on an .h5mu file, save the model and write the results to a new .h5mu",
        description=(
            "Train pengster.model.JointVAE on INPUT (an .h5mu file), save the model to --model-dir and write the "
            "results (pengster.tl.write_results) to --out, a new .h5mu file. The setup flags are the arguments of "
            "JointVAE.setup_mudata."
        ),
        epilog=(
            "example: pengster train mosaic.h5mu --out results.h5mu --model-dir model --rna-layer counts "
            "--atac-layer counts --batch-key batch --modalities rna_layer=rna,atac_layer=atac --max-epochs 200"
        ),
    )
    train.add_argument("input", metavar="INPUT", help="the MuData to train on (.h5mu); it is not modified")
    train.add_argument("--out", required=True, help="new .h5mu file for the results")
    train.add_argument("--model-dir", required=True, help="folder to save the trained model to (JointVAE.load)")
    train.add_argument("--overwrite", action="store_true", help="replace --out and --model-dir if they exist")
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
        help="default: about 500 optimizer steps, at least 20 epochs and at most scvi-tools' heuristic",
    )
    fit.add_argument("--batch-size", type=_positive_int, help="cells per minibatch (default: chosen from the data)")
    fit.add_argument("--accelerator", default="auto", choices=_ACCELERATORS)
    fit.add_argument("--devices", default="auto", help="Lightning devices: auto, a count, or a list such as 0,1")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    fit.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    return parser, train


def _quiet() -> None:
    """A command-line run shows the progress bar, the results and pengster's own warnings, not Lightning's chatter.

    The console script is the application, so it (not the library) sets these: Lightning's INFO lines (devices, seed,
    tips, early stopping) and a deprecation inside Lightning's own code on recent torch.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """Run the ``pengster`` command line."""
    parser, train = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        _quiet()
        import torch

        torch.set_num_threads(args.threads)
        from pengster._demo import run_demo

        run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
        return 0
    return _train(args, train.error)


def _check_paths(args: argparse.Namespace, error) -> None:
    source = Path(args.input)
    if not source.is_file():
        error(f"INPUT {args.input!r} does not exist; pass the path of an .h5mu file (written by mdata.write).")
    out = Path(args.out)
    if out.suffix != ".h5mu":
        error(f"--out {args.out!r}: the results are a MuData; pass a file name ending in .h5mu.")
    if out.resolve() == source.resolve():
        error(f"--out {args.out!r} is INPUT; the input is never modified: pass a new file name.")
    if out.exists() and not args.overwrite:
        error(f"--out {args.out!r} exists; pass another file name, or --overwrite to replace it.")
    model_dir = Path(args.model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        error(f"--model-dir {args.model_dir!r} is a file; pass a folder name.")
    if model_dir.is_dir() and any(model_dir.iterdir()) and not args.overwrite:
        error(f"--model-dir {args.model_dir!r} is not empty; pass another folder, or --overwrite to replace it.")


def _parse_modalities(text: str | None, mdata, error) -> dict[str, str] | None:
    if text is None:
        return None
    known = [*_LAYER_FLAGS, *_OBS_FLAGS]
    modalities = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        argument, sep, mod_key = entry.partition("=")
        if not sep or not mod_key:
            error(
                f"--modalities {text!r}: {entry!r} is not ARG=MOD; pass e.g. "
                "--modalities rna_layer=rna,atac_layer=atac."
            )
        if argument not in known:
            error(
                f"--modalities: unknown key {argument!r}; the keys are setup_mudata's argument names {known}, e.g. "
                "--modalities rna_layer=rna,protein_layer=prot."
            )
        if mod_key not in mdata.mod:
            error(f"--modalities {argument}={mod_key}: INPUT has no modality {mod_key!r}; it has {list(mdata.mod)}.")
        modalities[argument] = mod_key
    if not modalities:
        error("--modalities is empty; pass e.g. --modalities rna_layer=rna,atac_layer=atac, or leave it out.")
    return modalities


def _check_setup_flags(args: argparse.Namespace, mdata, modalities: dict[str, str] | None, error) -> None:
    from pengster.data._prepare import default_modalities

    if modalities is None:
        try:
            modalities = {f"{m}_layer": key for m, key in default_modalities(mdata).items()}
        except KeyError:
            error(
                f"INPUT's modalities {list(mdata.mod)} have none of the usual names (rna/gex, atac/peaks, "
                "prot/protein/adt); say which is which, e.g. --modalities rna_layer=<rna modality>."
            )
    for argument, flag in _LAYER_FLAGS.items():
        layer = getattr(args, argument)
        if layer is None:
            continue
        if argument not in modalities:
            error(f"{flag} {layer}: INPUT has no such modality; map it, e.g. --modalities {argument}=<modality>.")
        adata = mdata.mod[modalities[argument]]
        if layer not in adata.layers:
            error(
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
                error(
                    f"{flag} {key}: {where} has no column {key!r}; columns are {list(obs.columns)[:20]}; pass one of "
                    f"those, or leave {flag} out."
                )


def _train(args: argparse.Namespace, error) -> int:
    _check_paths(args, error)
    import mudata as md

    import pengster

    try:
        with md.set_options(pull_on_update=False):  # mdata.obs as written in the file
            mdata = md.read_h5mu(args.input)
    except (OSError, KeyError, ValueError) as exc:
        error(f"INPUT {args.input!r} could not be read as an .h5mu file ({exc}); write it with mdata.write(path).")
    modalities = _parse_modalities(args.modalities, mdata, error)
    _check_setup_flags(args, mdata, modalities, error)
    setup_kwargs = {name: getattr(args, name) for name in [*_LAYER_FLAGS, *_OBS_FLAGS]}
    try:
        pengster.model.JointVAE.setup_mudata(mdata, modalities=modalities, **setup_kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        error(f"INPUT cannot be set up with these flags: {exc.args[0] if exc.args else exc}")
    # the arguments are valid; from here on the run trains, and the process is the command's
    _quiet()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    import scvi

    scvi.settings.seed = args.seed
    model = pengster.model.JointVAE(mdata, n_latent=args.n_latent)
    devices = args.devices if not args.devices.replace(",", "").isdigit() else _devices(args.devices)
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        devices=devices,
        enable_progress_bar=args.progress_bar,
    )
    model.save(args.model_dir, overwrite=args.overwrite)
    written = pengster.tl.write_results(model, mdata)
    out = Path(args.out)
    partial = out.with_name(f".{out.name}.partial")
    with md.set_options(pull_on_update=False):  # the results are in obsm/layers/uns; nothing to pull into obs
        mdata.write(partial)
    partial.replace(out)  # a crash never leaves a half-written results file under the final name
    print(f"saved the model to {args.model_dir}/ and the results to {args.out}")
    if isinstance(written, dict):
        print("written keys: " + ", ".join(f"{kind} {keys}" for kind, keys in written.items()))
    return 0


def _devices(text: str) -> int | list[int]:
    """Lightning's devices: '2' is a count, '0,1' a list of device indices."""
    return [int(part) for part in text.split(",") if part] if "," in text else int(text)


if __name__ == "__main__":
    raise SystemExit(main())
