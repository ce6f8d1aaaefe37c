"""`pengster train`: trains on an .h5mu, saves the model, writes the results to a new .h5mu; every bad argument is an
argparse error naming the flag and the fix.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import mudata as md
import numpy as np
import pytest

from pengster.cli import main
from pengster.data import synthetic_mosaic


@pytest.fixture(scope="module")
def mosaic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mosaic.h5mu"
    mdata = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=0)
    mdata.write(path)
    return path


def _fails(capsys, argv: list[str], *patterns: str) -> str:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2  # argparse's usage error
    message = capsys.readouterr().err
    assert "pengster train: error:" in message
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    return message


def _train_args(mosaic_file, tmp_path, *extra: str) -> list[str]:
    return [
        "train",
        str(mosaic_file),
        "--out",
        str(tmp_path / "results.h5mu"),
        "--model-dir",
        str(tmp_path / "m"),
        *extra,
    ]


def test_missing_input_file(capsys, tmp_path):
    _fails(
        capsys,
        ["train", str(tmp_path / "nope.h5mu"), "--out", str(tmp_path / "r.h5mu"), "--model-dir", str(tmp_path / "m")],
        "INPUT",
        "nope.h5mu",
        "does not exist",
    )


def test_output_must_be_a_new_h5mu(capsys, mosaic_file, tmp_path):
    _fails(
        capsys,
        ["train", str(mosaic_file), "--out", str(tmp_path / "r.h5ad"), "--model-dir", str(tmp_path / "m")],
        "--out",
        "ending in .h5mu",
    )
    _fails(
        capsys,
        ["train", str(mosaic_file), "--out", str(mosaic_file), "--model-dir", str(tmp_path / "m")],
        "--out",
        "is INPUT",
        "new file name",
    )
    (tmp_path / "results.h5mu").write_bytes(b"")
    _fails(capsys, _train_args(mosaic_file, tmp_path), "--out", "exists", "--overwrite")


def test_model_dir_not_empty(capsys, mosaic_file, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.pt").write_bytes(b"")
    _fails(capsys, _train_args(mosaic_file, tmp_path), "--model-dir", "not empty", "--overwrite")


@pytest.mark.parametrize(
    ("extra", "patterns"),
    [
        (["--modalities", "rna=rna"], ["--modalities", "unknown key 'rna'", "rna_layer=rna,protein_layer=prot"]),
        (
            ["--modalities", "rna_layer=gex"],
            ["--modalities rna_layer=gex", "no modality 'gex'", "'rna', 'atac', 'prot'"],
        ),
        (["--modalities", "rna_layer"], ["--modalities", "is not ARG=MOD"]),
        (["--rna-layer", "raw"], ["--rna-layer raw", "no layer 'raw'", "['counts']", "leave --rna-layer out"]),
        (
            ["--modalities", "rna_layer=rna", "--protein-layer", "counts"],
            ["--protein-layer counts", "--modalities protein_layer=<modality>"],
        ),
        (["--batch-key", "sample"], ["--batch-key sample", "INPUT's obs has no column 'sample'", "'batch'"]),
        (
            ["--modalities", "rna_layer=rna,batch_key=atac", "--batch-key", "run"],
            ["--batch-key run", "INPUT's modality 'atac' has no column 'run'"],
        ),
        (["--continuous-covariate-keys", "pct_mito"], ["--continuous-covariate-keys pct_mito", "no column"]),
        # errors that need the counts come from setup_mudata, whose messages name the object and the fix
        (["--batch-key", "cell_type", "--continuous-covariate-keys", "batch"], ["set up", "not numbers"]),
    ],
    ids=[
        "unknown-key",
        "unknown-mod",
        "not-pair",
        "bad-layer",
        "unmapped-layer",
        "batch",
        "batch-in-mod",
        "cont",
        "setup",
    ],
)
def test_bad_setup_flags_name_the_flag_and_the_fix(capsys, mosaic_file, tmp_path, extra, patterns):
    _fails(capsys, _train_args(mosaic_file, tmp_path, *extra), *patterns)
    assert not (tmp_path / "results.h5mu").exists() and not (tmp_path / "m").exists()


def test_bad_numbers_and_accelerator(capsys, mosaic_file, tmp_path):
    with pytest.raises(SystemExit):
        main(_train_args(mosaic_file, tmp_path, "--max-epochs", "0"))
    assert "--max-epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_train_args(mosaic_file, tmp_path, "--accelerator", "tpuu"))
    assert "--accelerator" in capsys.readouterr().err


def test_train_saves_the_model_and_writes_results_to_a_new_file(mosaic_file, tmp_path):
    before = hashlib.sha256(mosaic_file.read_bytes()).hexdigest()
    out, model_dir = tmp_path / "results.h5mu", tmp_path / "model"
    argv = [
        *("train", str(mosaic_file), "--out", str(out), "--model-dir", str(model_dir)),
        *("--rna-layer", "counts", "--atac-layer", "counts", "--protein-layer", "counts", "--batch-key", "batch"),
        *("--modalities", "rna_layer=rna,atac_layer=atac,protein_layer=prot"),
        *("--max-epochs", "2", "--n-latent", "4", "--accelerator", "cpu", "--threads", "1"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "pengster.cli", *argv], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout + run.stderr
    assert "Epoch 2/2" in printed  # the progress bar
    for chatter in ("GPU available", "FutureWarning", "LeafSpec", "log_every_n_steps", "Seed set", "INFO"):
        assert chatter not in printed, chatter
    assert str(out) in run.stdout
    assert hashlib.sha256(mosaic_file.read_bytes()).hexdigest() == before

    results = md.read_h5mu(out)
    latent = results.obsm["X_pengster"]
    assert latent.shape == (120, 4) and np.isfinite(latent).all()
    assert "pengster" in results.uns

    from pengster.model import JointVAE

    source = md.read_h5mu(mosaic_file)
    model = JointVAE.load(str(model_dir), source)
    assert model.is_trained_ and model.modalities == {"rna": "rna", "atac": "atac", "protein": "prot"}
    np.testing.assert_allclose(model.get_latent_representation(source), latent, rtol=1e-4, atol=1e-5)
