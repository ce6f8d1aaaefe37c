"""``pengster train`` after its checks: set up, train with a checkpoint per epoch, save the model, write the results."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import warnings
from collections.abc import Callable, Iterator

from pengster._cli_checks import (
    FAILED,
    INTERRUPTED,
    LAYER_FLAGS,
    OBS_FLAGS,
    CommandError,
    Outputs,
    check_accelerator,
    check_paths,
    check_setup_flags,
    check_targets,
    parse_modalities,
    print_line,
    read_features,
    read_input,
    writable_folder,
)


def _resume_command(argv: list[str]) -> str:
    return "pengster " + shlex.join([*argv, *([] if "--resume" in argv else ["--resume"])])


def run_train(args: argparse.Namespace, argv: list[str]) -> int:
    outputs = check_paths(args)
    mdata = read_input(args.input)
    modalities = parse_modalities(args.modalities, mdata)
    present = check_setup_flags(args, mdata, modalities)
    check_targets(args, present)
    features = read_features(args, mdata, present)
    check_accelerator(args)

    import pengster

    setup_kwargs = {name: getattr(args, name) for name in [*LAYER_FLAGS, *OBS_FLAGS]}
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
        writable_folder(folder, flag)
    writable_folder(outputs.checkpoint_dir, "--checkpoint-dir")

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
            print_line(
                f"pengster train: interrupted; the last finished epoch is saved in {outputs.checkpoint}; resume with: "
                f"{_resume_command(argv)}"
            )
        else:
            print_line("pengster train: interrupted in the first epoch, before a checkpoint; run the command again.")
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


def _save_and_write(args, model, mdata, outputs: Outputs, targets, features) -> int:
    """Save the trained model, then write the results; a failure says where the model is."""
    import mudata as md

    import pengster

    with _failure_says_where_the_model_is(
        args,
        f"training finished, but saving the model to --model-dir {str(outputs.model_dir)!r} failed",
        f"the trained model of the last epoch is in {str(outputs.checkpoint_model)!r}: load it with "
        "pengster.model.JointVAE.load, or copy that folder.",
    ):
        model.save(str(outputs.model_dir), overwrite=args.overwrite)
    partial = outputs.out.with_name(f".{outputs.out.name}.partial")
    with _failure_says_where_the_model_is(
        args,
        f"the trained model is saved in {str(outputs.model_dir)!r}, but writing the results to --out "
        f"{str(outputs.out)!r} failed",
        "write them from Python with "
        f"pengster.tl.write_results(pengster.model.JointVAE.load({str(outputs.model_dir)!r}, mdata), mdata).",
        clean_up=lambda: partial.unlink(missing_ok=True),
    ):
        written = pengster.tl.write_results(model, mdata, targets=targets, features=features or None)
        with md.set_options(pull_on_update=False):  # the results are in obsm/layers/uns; nothing to pull into obs
            mdata.write(partial)
        partial.replace(outputs.out)  # a crash never leaves a half-written results file under the final name
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


@contextlib.contextmanager
def _failure_says_where_the_model_is(
    args: argparse.Namespace, failed: str, kept: str, *, clean_up: Callable[[], object] | None = None
) -> Iterator[None]:
    """Turn any failure after training, Ctrl-C included, into ``<failed> (<error>); <kept>`` (status 130 or 1).

    The trained model must not be lost, so the message says where it is; ``clean_up`` runs first, even with
    ``--traceback``.
    """
    try:
        yield
    except (Exception, KeyboardInterrupt) as error:
        if clean_up is not None:
            clean_up()
        if args.traceback:
            raise
        raise CommandError(
            f"{failed} ({type(error).__name__}: {error}); {kept}",
            status=INTERRUPTED if isinstance(error, KeyboardInterrupt) else FAILED,
        ) from None


def _predicted(mdata, modality: str) -> bool:
    return f"pengster_pred_{modality}" in mdata.obsm


def _remove_checkpoint(outputs: Outputs) -> None:
    """Remove the checkpoint files (and the folder when nothing else is in it), never anything else."""
    outputs.checkpoint.unlink(missing_ok=True)
    shutil.rmtree(outputs.checkpoint_model, ignore_errors=True)
    with contextlib.suppress(OSError):
        outputs.checkpoint_dir.rmdir()
