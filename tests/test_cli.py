"""`pengster train`: trains on an .h5mu, saves the model, writes the results to a new .h5mu. Every misuse ends with
exit status 2 and one line naming the flag and the fix; Ctrl-C leaves a checkpoint that `--resume` continues; a
failure after training says where the trained model is."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mudata as md
import numpy as np
import pytest
import requests
import torch
from lightning.pytorch.callbacks import Callback

import pengster
from pengster.cli import main
from pengster.data import synthetic_mosaic
from pengster.model import JointVAE
from pengster.train._callbacks import LAST_CHECKPOINT, LAST_MODEL

N_PEAKS = 40
SETUP = ("--modalities", "rna_layer=rna,atac_layer=atac,protein_layer=prot", "--batch-key", "batch")
FAST = ("--max-epochs", "2", "--n-latent", "4", "--batch-size", "32", "--accelerator", "cpu", "--no-progress-bar")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A mosaic .h5mu, its RNA as .h5ad, an AnnData renamed .h5mu, a text file named .h5mu, and peak lists."""
    folder = tmp_path_factory.mktemp("cli")
    mdata = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=N_PEAKS, n_proteins=8, seed=0)
    mdata.write(folder / "mosaic.h5mu")
    mdata.mod["rna"].write_h5ad(folder / "cells.h5ad")
    mdata.mod["rna"].write_h5ad(folder / "anndata.h5mu")
    (folder / "notes.h5mu").write_text("not hdf5\n")
    (folder / "counts.csv").write_text("a,b\n")
    (folder / "peaks.txt").write_text("\n".join(mdata.mod["atac"].var_names[:5]) + "\n")
    (folder / "genes_as_peaks.txt").write_text("gene0\npeak1\ngene1\n")
    return folder


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own errors and --version
        return exit_.code


def _argv(files: Path, tmp: Path, *extra: str, source: str = "mosaic.h5mu", out: str = "results.h5mu") -> list[str]:
    return ["train", str(files / source), "--out", str(tmp / out), "--model-dir", str(tmp / "m"), *extra]


@dataclass(frozen=True)
class Misuse:
    argv: Callable[[Path, Path], list[str]]
    patterns: tuple[str, ...]
    prepare: Callable[[Path], object] | None = None


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


MISUSES = {
    "missing-input": Misuse(
        lambda f, t: _argv(f, t, source="nope.h5mu"), ("INPUT", "nope.h5mu", "does not exist", ".h5mu file")
    ),
    "h5ad-input": Misuse(
        lambda f, t: _argv(f, t, source="cells.h5ad"),
        ("INPUT", "cells.h5ad", "is an AnnData file", "mudata.MuData({'rna': rna, 'atac': atac}).write("),
    ),
    "anndata-named-h5mu": Misuse(
        lambda f, t: _argv(f, t, source="anndata.h5mu"), ("INPUT", "holds no MuData", "mudata.MuData(")
    ),
    "not-hdf5": Misuse(lambda f, t: _argv(f, t, source="notes.h5mu"), ("INPUT", "is not an HDF5 file", "mdata.write")),
    "csv-input": Misuse(lambda f, t: _argv(f, t, source="counts.csv"), ("INPUT", "is not an .h5mu file")),
    "missing-out": Misuse(lambda f, t: ["train", str(f / "mosaic.h5mu"), "--model-dir", str(t / "m")], ("--out",)),
    "out-not-h5mu": Misuse(lambda f, t: _argv(f, t, out="r.h5ad"), ("--out", "ending in .h5mu")),
    "out-is-input": Misuse(
        lambda f, t: ["train", str(f / "mosaic.h5mu"), "--out", str(f / "mosaic.h5mu"), "--model-dir", str(t / "m")],
        ("--out", "is INPUT", "new file name"),
    ),
    "out-exists": Misuse(
        lambda f, t: _argv(f, t), ("--out", "exists", "--overwrite"), lambda t: _touch(t / "results.h5mu")
    ),
    "out-parent-is-file": Misuse(
        lambda f, t: _argv(f, t, out="afile/r.h5mu"),
        ("--out", "is a file, not a folder"),
        lambda t: _touch(t / "afile"),
    ),
    "model-dir-not-empty": Misuse(
        lambda f, t: _argv(f, t), ("--model-dir", "not empty", "--overwrite"), lambda t: _touch(t / "m" / "model.pt")
    ),
    "model-dir-is-file": Misuse(lambda f, t: _argv(f, t), ("--model-dir", "is a file"), lambda t: _touch(t / "m")),
    "model-dir-holds-out": Misuse(lambda f, t: _argv(f, t, out="m/r.h5mu"), ("--model-dir", "holds --out")),
    "checkpoint-dir-is-file": Misuse(
        lambda f, t: _argv(f, t, "--checkpoint-dir", str(t / "ckpt")),
        ("--checkpoint-dir", "is a file"),
        lambda t: _touch(t / "ckpt"),
    ),
    "old-checkpoint": Misuse(
        lambda f, t: _argv(f, t),
        ("--checkpoint-dir (default", "m.checkpoint", "interrupted run", "--resume", "--overwrite"),
        lambda t: _touch(t / "m.checkpoint" / LAST_CHECKPOINT),
    ),
    "resume-without-checkpoint": Misuse(lambda f, t: _argv(f, t, "--resume"), ("--resume", "holds no last.ckpt")),
    "setup-unknown-key": Misuse(
        lambda f, t: _argv(f, t, "--modalities", "rna=rna"),
        ("--modalities", "unknown key 'rna'", "rna_layer=rna,protein_layer=prot"),
    ),
    "unknown-modality": Misuse(
        lambda f, t: _argv(f, t, "--modalities", "rna_layer=gex"),
        ("--modalities rna_layer=gex", "no modality 'gex'", "'rna', 'atac', 'prot'"),
    ),
    "modalities-syntax": Misuse(lambda f, t: _argv(f, t, "--modalities", "rna_layer"), ("--modalities", "not ARG=MOD")),
    "layer-not-in-file": Misuse(
        lambda f, t: _argv(f, t, "--rna-layer", "raw"),
        ("--rna-layer raw", "no layer 'raw'", "['counts']", "leave --rna-layer out"),
    ),
    "unmapped-layer": Misuse(
        lambda f, t: _argv(f, t, "--modalities", "rna_layer=rna", "--protein-layer", "counts"),
        ("--protein-layer counts", "--modalities protein_layer=<modality>"),
    ),
    "unknown-batch-key": Misuse(
        lambda f, t: _argv(f, t, "--batch-key", "sample"),
        ("--batch-key sample", "INPUT's obs has no column 'sample'", "'batch'"),
    ),
    "batch-key-in-modality": Misuse(
        lambda f, t: _argv(f, t, "--modalities", "rna_layer=rna,batch_key=atac", "--batch-key", "run"),
        ("--batch-key run", "INPUT's modality 'atac' has no column 'run'"),
    ),
    "unknown-covariate": Misuse(
        lambda f, t: _argv(f, t, "--continuous-covariate-keys", "pct_mito"),
        ("--continuous-covariate-keys pct_mito", "no column"),
    ),
    # errors that need the counts come from setup_mudata, whose messages name the object and the fix
    "setup": Misuse(
        lambda f, t: _argv(f, t, "--batch-key", "cell_type", "--continuous-covariate-keys", "batch"),
        ("set up", "not numbers"),
    ),
    "max-epochs-0": Misuse(lambda f, t: _argv(f, t, "--max-epochs", "0"), ("--max-epochs", "at least 1")),
    "max-epochs-negative": Misuse(lambda f, t: _argv(f, t, "--max-epochs", "-5"), ("--max-epochs", "at least 1")),
    "max-epochs-text": Misuse(lambda f, t: _argv(f, t, "--max-epochs", "ten"), ("--max-epochs", "not a whole number")),
    "n-latent-0": Misuse(lambda f, t: _argv(f, t, "--n-latent", "0"), ("--n-latent", "at least 1")),
    "unknown-accelerator": Misuse(
        lambda f, t: _argv(f, t, "--accelerator", "tpuu"), ("--accelerator", "invalid choice: 'tpuu'", "'cpu'")
    ),
    "gpu-without-gpu": Misuse(
        lambda f, t: _argv(f, t, "--accelerator", "gpu"),
        ("--accelerator gpu", "sees no CUDA GPU", "--accelerator cpu"),
    ),
    "bad-devices": Misuse(lambda f, t: _argv(f, t, "--devices", "first"), ("--devices", "'first'", "0,1")),
    "unknown-target": Misuse(
        lambda f, t: _argv(f, t, "--targets", "rna,dna"), ("--targets", "dna is not a modality", "rna,atac,protein")
    ),
    "target-not-in-input": Misuse(
        lambda f, t: _argv(f, t, "--modalities", "rna_layer=rna,protein_layer=prot", "--targets", "atac"),
        ("--targets atac", "INPUT has no atac modality", "rna,protein"),
    ),
    "features-file-missing": Misuse(
        lambda f, t: _argv(f, t, "--features", f"atac={t / 'nope.txt'}"),
        ("--features atac=", "nope.txt", "does not exist", "one atac feature name per line"),
    ),
    "features-syntax": Misuse(
        lambda f, t: _argv(f, t, "--features", str(f / "peaks.txt")), ("--features", "not MODALITY=FILE", "atac=")
    ),
    "features-not-features": Misuse(
        lambda f, t: _argv(f, t, "--features", f"atac={f / 'genes_as_peaks.txt'}"),
        ("--features atac=", "2 of its 3 names are not features of INPUT's modality 'atac'", "'gene0'"),
    ),
    "features-not-in-targets": Misuse(
        lambda f, t: _argv(f, t, "--targets", "rna", "--features", f"atac={f / 'peaks.txt'}"),
        ("--features atac=", "atac is not in --targets rna", "--targets rna,atac"),
    ),
}


@pytest.mark.parametrize("name", list(MISUSES))
def test_misuse_ends_with_status_2_and_one_line_naming_the_flag_and_the_fix(name, files, tmp_path, capsys, monkeypatch):
    # the same answer on a machine with a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    misuse = MISUSES[name]
    if misuse.prepare is not None:
        misuse.prepare(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    status = _run(misuse.argv(files, tmp_path))
    printed = capsys.readouterr()
    assert status == 2, printed
    assert printed.out == ""
    lines = printed.err.splitlines()
    assert len(lines) == 1, printed.err
    assert lines[0].startswith("pengster train: error: "), lines[0]
    assert "Traceback" not in lines[0]
    for pattern in misuse.patterns:
        assert pattern in lines[0], f"{pattern!r} not in {lines[0]!r}"
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, nothing removed


def test_the_catalogue_covers_at_least_15_misuses():
    assert len(MISUSES) >= 15


def test_version(capsys):
    assert _run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pengster {metadata.version('pengster')}"


def test_train_help_lists_the_flags(capsys):
    assert _run(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--checkpoint-dir", "--resume", "--targets MOD,...", "--features MOD=FILE", "--overwrite"):
        assert flag in text
    assert "default: MODEL_DIR.checkpoint" in text and "a missing parent folder is created" in text


def test_demo_without_data_dir_or_network_says_which_variable_to_set(tmp_path, capsys, monkeypatch):
    def no_network(*, url, **kwargs):
        raise requests.exceptions.ConnectionError(f"Max retries exceeded with url: {url}")

    monkeypatch.delenv("PENGSTER_DATA_DIR", raising=False)
    monkeypatch.setattr(pengster.datasets._fetch.pooch, "retrieve", no_network)
    monkeypatch.setattr(pengster.datasets._fetch.pooch, "os_cache", lambda name: tmp_path / "cache")
    status = _run(["demo", "--out", str(tmp_path / "demo"), "--max-epochs", "1"])
    err = capsys.readouterr().err
    assert status == 1
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pengster demo: error: $PENGSTER_DATA_DIR is not set")
    assert "export PENGSTER_DATA_DIR=" in err


def test_train_creates_the_out_folder_and_writes_the_chosen_targets_and_features(files, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "results.h5mu"
    argv = [
        *("train", str(files / "mosaic.h5mu"), "--out", str(out), "--model-dir", str(tmp_path / "m")),
        *("--targets", "rna,atac", "--features", f"atac={files / 'peaks.txt'}", *SETUP, *FAST),
    ]
    assert _run(argv) == 0, capsys.readouterr().err
    assert f"the results to {out}" in capsys.readouterr().out
    results = md.read_h5mu(out)
    peaks = (files / "peaks.txt").read_text().split()
    assert results.obsm["pengster_pred_atac"].columns.tolist() == peaks
    assert results.obsm["pengster_pred_rna"].shape == (120, 30)
    assert "pengster_pred_protein" not in results.obsm  # not in --targets
    assert "pengster_denoised" not in results.mod["atac"].layers  # features chosen: no full layer
    assert not (tmp_path / "m.checkpoint").exists()  # removed once everything is written
    JointVAE.load(str(tmp_path / "m"), md.read_h5mu(files / "mosaic.h5mu"))


class _InterruptAt(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_ctrl_c_leaves_a_checkpoint_and_the_printed_resume_command_finishes(files, tmp_path, capsys, monkeypatch):
    train = JointVAE.train
    monkeypatch.setattr(JointVAE, "train", lambda self, **kwargs: train(self, callbacks=[_InterruptAt(1)], **kwargs))
    argv = _argv(files, tmp_path, *SETUP, *FAST)
    assert _run(argv) == 130
    lines = capsys.readouterr().err.splitlines()
    checkpoint = tmp_path / "m.checkpoint" / LAST_CHECKPOINT
    assert lines[-1] == (
        f"pengster train: interrupted; the last finished epoch is saved in {checkpoint}; resume with: "
        f"{'pengster ' + shlex.join(argv)} --resume"
    )
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0
    assert not (tmp_path / "m").exists() and not (tmp_path / "results.h5mu").exists()

    monkeypatch.setattr(JointVAE, "train", train)
    assert _run(shlex.split(lines[-1].split("resume with: pengster ")[1])) == 0, capsys.readouterr().err
    model = JointVAE.load(str(tmp_path / "m"), md.read_h5mu(files / "mosaic.h5mu"))
    assert model.history["train_loss"].index.tolist() == [1]  # only the second epoch ran after resuming
    assert (tmp_path / "results.h5mu").is_file() and not checkpoint.exists()


@pytest.mark.parametrize("failing", ["save", "write_results"])
def test_a_failure_after_training_keeps_the_model_and_says_where(files, tmp_path, capsys, monkeypatch, failing):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "save":
        save = JointVAE.save
        # the per-epoch checkpoint saves a model too: only the final save to --model-dir fails

        def save_fails_in_model_dir(self, dir_path, **kwargs):
            if Path(dir_path) == tmp_path / "m":
                no_space()
            return save(self, dir_path, **kwargs)

        monkeypatch.setattr(JointVAE, "save", save_fails_in_model_dir)
    else:
        monkeypatch.setattr(pengster.tl, "write_results", no_space)
    assert _run(_argv(files, tmp_path, *SETUP, *FAST)) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "No space left on device" in line
    if failing == "save":
        kept = tmp_path / "m.checkpoint" / LAST_MODEL
        assert f"the trained model of the last epoch is in '{kept}'" in line
    else:
        kept = tmp_path / "m"
        assert f"the trained model is saved in '{kept}', but writing the results to --out" in line
        assert "pengster.tl.write_results(pengster.model.JointVAE.load(" in line
        assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))
    monkeypatch.undo()
    model = JointVAE.load(str(kept), md.read_h5mu(files / "mosaic.h5mu"))
    assert model.is_trained_


def test_left_out_atac_predictions_are_announced_with_the_flag(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pengster.tl._write, "MAX_DEFAULT_PEAKS", N_PEAKS - 1)
    assert _run(_argv(files, tmp_path, *SETUP, *FAST)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "pengster_pred_atac" not in md.read_h5mu(tmp_path / "results.h5mu").obsm
    assert f"RNA->ATAC predictions were left out: {N_PEAKS} peaks" in out
    assert "pass --targets with atac" in out and "--features atac=FILE" in out


def test_train_saves_the_model_and_writes_results_to_a_new_file(files, tmp_path):
    """End to end in a subprocess, as a user runs it: the progress bar, no Lightning chatter."""
    mosaic_file = files / "mosaic.h5mu"
    before = hashlib.sha256(mosaic_file.read_bytes()).hexdigest()
    out, model_dir = tmp_path / "results.h5mu", tmp_path / "model"
    argv = [
        *("train", str(mosaic_file), "--out", str(out), "--model-dir", str(model_dir)),
        *("--rna-layer", "counts", "--atac-layer", "counts", "--protein-layer", "counts", "--batch-key", "batch"),
        *("--modalities", "rna_layer=rna,atac_layer=atac,protein_layer=prot"),
        *("--max-epochs", "2", "--n-latent", "4", "--accelerator", "cpu", "--threads", "1"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "pengster", *argv], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout + run.stderr
    assert "Epoch 2/2" in printed  # the progress bar
    for chatter in ("GPU available", "FutureWarning", "LeafSpec", "litlogger", "log_every_n_steps", "Seed set"):
        assert chatter not in printed, chatter
    assert "Traceback" not in printed
    assert str(out) in run.stdout
    assert hashlib.sha256(mosaic_file.read_bytes()).hexdigest() == before

    results = md.read_h5mu(out)
    latent = results.obsm["X_pengster"]
    assert latent.shape == (120, 4) and np.isfinite(latent).all()
    assert "pengster" in results.uns

    source = md.read_h5mu(mosaic_file)
    model = JointVAE.load(str(model_dir), source)
    assert model.is_trained_ and model.modalities == {"rna": "rna", "atac": "atac", "protein": "prot"}
    np.testing.assert_allclose(model.get_latent_representation(source), latent, rtol=1e-4, atol=1e-5)
