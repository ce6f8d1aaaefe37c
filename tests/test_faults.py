"""Faults: interrupted or killed training resumes to the same result, saves are atomic and versioned, a NaN loss
stops training with a message naming the modality and the batch, and real data with extreme depths stays finite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mudata as md
import numpy as np
import pytest
import safetensors.torch
import scvi
import torch
from lightning.pytorch.callbacks import Callback
from scipy import sparse

import pengster
from pengster._constants import REGISTRY_KEYS
from pengster.data import synthetic_mosaic
from pengster.io._save import FORMAT_VERSION, MANIFEST_NAME
from pengster.model import JointVAE
from pengster.train import FiniteLossCheck
from pengster.train._callbacks import LAST_CHECKPOINT, LAST_MODEL

# the tests below put NaN counts into a minibatch on purpose: scvi-tools' distributions warn that NaN is outside
# their support before pengster stops training with its own error
pytestmark = pytest.mark.filterwarnings("ignore:The value argument must be within the support:UserWarning")

torch.set_num_threads(1)

ALL = {"rna": "rna", "atac": "atac", "protein": "prot"}
SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}
MODEL_KWARGS = {"n_latent": 4, "n_hidden": 16}
TRAIN_KWARGS = {"max_epochs": 5, "batch_size": 32, "enable_progress_bar": False}
STOP_EPOCH = 3


def _mosaic() -> md.MuData:
    mdata = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=0)
    JointVAE.setup_mudata(mdata, modalities=SETUP_MODALITIES, batch_key="batch")
    return mdata


class _InterruptAt(Callback):
    def __init__(self, epoch: int, *, kill: bool = False):
        self.epoch, self.kill = epoch, kill

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def uninterrupted():
    mdata = _mosaic()
    scvi.settings.seed = 0
    model = JointVAE(mdata, **MODEL_KWARGS)
    model.train(**TRAIN_KWARGS)
    return mdata, model


def _resume(mdata, checkpoint_dir: Path) -> JointVAE:
    scvi.settings.seed = 0
    model = JointVAE(mdata, **MODEL_KWARGS)
    model.train(**TRAIN_KWARGS, checkpoint_dir=str(checkpoint_dir), ckpt_path=str(checkpoint_dir / LAST_CHECKPOINT))
    return model


def test_checkpoints_without_validation_cells(tmp_path):
    mdata = _mosaic()
    model = JointVAE(mdata, **MODEL_KWARGS)
    model.train(max_epochs=2, batch_size=32, train_size=1.0, checkpoint_dir=str(tmp_path), enable_progress_bar=False)
    assert model.is_trained_ and "validation_loss" not in model.history
    assert torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)["epoch"] == 1
    JointVAE.load(str(tmp_path / LAST_MODEL), adata=mdata)


def test_keyboard_interrupt_leaves_a_loadable_checkpoint_that_resumes_to_the_same_model(uninterrupted, tmp_path):
    mdata, reference = uninterrupted
    handler = signal.getsignal(signal.SIGINT)
    scvi.settings.seed = 0
    model = JointVAE(mdata, **MODEL_KWARGS)
    with pytest.raises(KeyboardInterrupt, match=r"training interrupted; the model is not marked trained; resume from"):
        model.train(**TRAIN_KWARGS, checkpoint_dir=str(tmp_path), callbacks=[_InterruptAt(STOP_EPOCH)])
    assert not model.is_trained_
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning leaves SIGINT ignored; we restore it
    assert sorted(os.listdir(tmp_path)) == [LAST_CHECKPOINT, LAST_MODEL]  # no temporary files left
    checkpoint = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == STOP_EPOCH - 1
    loaded = JointVAE.load(str(tmp_path / LAST_MODEL), adata=mdata)
    assert np.isfinite(loaded.get_latent_representation()).all()

    resumed = _resume(mdata, tmp_path)
    assert resumed.history["train_loss"].index.tolist() == list(range(STOP_EPOCH, TRAIN_KWARGS["max_epochs"]))
    np.testing.assert_array_equal(resumed.get_latent_representation(), reference.get_latent_representation())
    np.testing.assert_array_equal(
        resumed.history["train_loss"].to_numpy(), reference.history["train_loss"].to_numpy()[STOP_EPOCH:]
    )


_KILLED_RUN = """
import os, signal, sys
import mudata as md, scvi, torch
torch.set_num_threads(1); md.set_options(pull_on_update=False); scvi.settings.dl_num_workers = 0
sys.path.insert(0, {tests!r})
from test_faults import MODEL_KWARGS, STOP_EPOCH, TRAIN_KWARGS, _InterruptAt, _mosaic
from pengster.model import JointVAE
mdata = _mosaic()
scvi.settings.seed = 0
model = JointVAE(mdata, **MODEL_KWARGS)
model.train(**TRAIN_KWARGS, checkpoint_dir={folder!r}, callbacks=[_InterruptAt(STOP_EPOCH, kill=True)])
"""


def test_killed_process_leaves_a_checkpoint_that_resumes_to_the_same_model(uninterrupted, tmp_path):
    mdata, reference = uninterrupted
    script = _KILLED_RUN.format(tests=str(Path(__file__).parent), folder=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert (tmp_path / LAST_CHECKPOINT).exists()
    JointVAE.load(str(tmp_path / LAST_MODEL), adata=mdata)  # complete and loadable
    resumed = _resume(mdata, tmp_path)
    np.testing.assert_array_equal(resumed.get_latent_representation(), reference.get_latent_representation())


# --------------------------------------------------------------------------------------------- save and load
def test_save_records_versions_registry_and_checksum(uninterrupted, tmp_path):
    mdata, model = uninterrupted
    model.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["pengster_version"] == pengster.__version__
    assert manifest["scvi_tools_version"] == scvi.__version__
    assert manifest["modalities"] == ALL
    assert manifest["registry"]["setup_args"]["batch_key"] == "batch"
    assert manifest["var_names"]["prot"] == mdata.mod["prot"].var_names.tolist()
    assert manifest["init_params"]["non_kwargs"]["n_latent"] == MODEL_KWARGS["n_latent"]
    assert set(manifest["files"]) == {"model.safetensors"}
    with pytest.raises(ValueError, match=r"already exists; pass overwrite=True"):
        model.save(tmp_path / "model")


def test_crash_mid_save_keeps_the_previous_model(uninterrupted, tmp_path, monkeypatch):
    mdata, model = uninterrupted
    target = tmp_path / "model"
    model.save(target)
    before = (target / "model.safetensors").read_bytes()

    def crash(tensors, filename, **kwargs):
        Path(filename).write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(target, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # the staging folder is gone
    assert (target / "model.safetensors").read_bytes() == before
    monkeypatch.undo()
    JointVAE.load(str(target), adata=mdata)


@pytest.mark.parametrize(
    ("damage", "error", "pattern"),
    [
        ("truncate", ValueError, r"model\.safetensors' does not match the checksum .* damaged, truncated"),
        (
            "newer_format",
            ValueError,
            rf"saved by pengster 9\.0 in format 99; this pengster .* reads format {FORMAT_VERSION}",
        ),
        ("other_class", ValueError, r"holds a TOTALVI, not a JointVAE; load it with pengster\.model\.TOTALVI\.load"),
        ("no_model_file", FileNotFoundError, r"has no model\.safetensors; the save did not finish or the file was"),
        ("bad_manifest", ValueError, r"pengster\.json' is not valid JSON"),
        ("no_manifest", FileNotFoundError, r"has no pengster\.json: it is not a folder written by JointVAE\.save"),
    ],
)
def test_damaged_or_incompatible_saves_give_clear_errors(uninterrupted, tmp_path, damage, error, pattern):
    mdata, model = uninterrupted
    folder = tmp_path / "model"
    model.save(folder)
    manifest_path, weights = folder / MANIFEST_NAME, folder / "model.safetensors"
    manifest = json.loads(manifest_path.read_text())
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if damage == "no_manifest":
        manifest_path.unlink()
    if damage in ("newer_format", "other_class"):
        manifest |= {"format_version": 99, "pengster_version": "9.0"} if damage == "newer_format" else {}
        manifest |= {"model_class": "TOTALVI"} if damage == "other_class" else {}
        manifest_path.write_text(json.dumps(manifest))
    if damage == "no_model_file":
        weights.unlink()
    if damage == "bad_manifest":
        manifest_path.write_text("{not json")
    with pytest.raises(error, match=pattern):
        JointVAE.load(str(folder), adata=mdata)


# --------------------------------------------------------------------------------------------- NaN loss
def test_nan_loss_stops_training_naming_the_modality_and_the_batch():
    mdata = _mosaic()
    scvi.settings.seed = 0
    model = JointVAE(mdata, **MODEL_KWARGS)
    # garbage that slipped past the checks (written into the registered data after setup_mudata)
    registered = model.adata.mod["prot"].X
    cell = int(np.flatnonzero(np.diff(registered.indptr))[0])
    registered.data[registered.indptr[cell]] = np.inf
    with pytest.raises(FloatingPointError) as excinfo:
        model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    message = str(excinfo.value)
    # (the module's distributions do not check their arguments: the NaN reaches the loss, checked before backward)
    assert "JointVAE training stopped: the loss is nan at epoch 0, step " in message
    assert "its cells come from batch 'b0' (" in message and "'b1' (" in message
    # where the NaN starts comes first; the rna encoder and the atac terms stay finite
    assert "Non-finite, from where it starts: the 'protein' encoder, for 1 cells; " in message
    assert "the 'protein' reconstruction, for 1 cells" in message
    assert "'rna' encoder" not in message and "atac" not in message
    assert not model.is_trained_
    assert all(torch.isfinite(p).all() for p in model.module.parameters())  # stopped before the update
    # and the batch-norm statistics that the minibatch's forward pass had already updated are put back
    assert all(torch.isfinite(b).all() for b in model.module.buffers() if b.is_floating_point())


class _PoisonAt(Callback):
    """Write NaN into the protein counts of one training minibatch; keep the weights and buffers before each step."""

    def __init__(self, epoch: int, batch_idx: int):
        self.at, self.started, self.before, self.validated = (epoch, batch_idx), [], {}, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = (trainer.current_epoch, batch_idx)
        self.started.append(step)
        module = pl_module.module
        self.before[step] = [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]
        if step == self.at:
            batch[REGISTRY_KEYS.counts("protein")].fill_(np.nan)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.validated.append(trainer.current_epoch)


@pytest.mark.parametrize(
    ("fast", "train_size", "poisoned"),
    [(True, 0.9, 1), (True, 0.9, 3), (True, 1.0, 3), (False, 0.9, 1)],  # a middle or the last step of the epoch
)
def test_non_finite_step_stops_at_once_with_the_weights_as_before_it(fast, train_size, poisoned):
    mdata = _mosaic()
    scvi.settings.seed = 0
    model = JointVAE(mdata, **MODEL_KWARGS)
    poison = _PoisonAt(1, poisoned)
    where = rf"the loss is nan at epoch 1, step \d+ \(training minibatch {poisoned}\)"
    with pytest.raises(FloatingPointError, match=where):
        model.train(
            max_epochs=3, batch_size=32, train_size=train_size, fast=fast, enable_progress_bar=False, callbacks=[poison]
        )
    assert poison.started[-1] == (1, poisoned)  # no later step started
    assert 0 in poison.validated or train_size == 1.0
    # training stopped inside epoch 1: its validation pass never ran (epoch 0's did, above). A check deferred to the
    # end of the epoch would let epoch 1 validate first and fail this (with train_size=1.0 nothing validates)
    assert 1 not in poison.validated
    # the optimizer did not apply the step, and its forward pass's statistics are put back
    module = model.module
    after = [*module.parameters(), *module.buffers()]
    assert all(torch.equal(a, b) for a, b in zip(after, poison.before[(1, poisoned)], strict=True))
    assert not model.is_trained_


def test_with_gradient_accumulation_the_error_names_the_bad_minibatch_and_restores_the_window():
    mdata = _mosaic()
    scvi.settings.seed = 0
    model = JointVAE(mdata, **MODEL_KWARGS)
    poison = _PoisonAt(1, 0)  # the first of the two minibatches of an optimizer step
    with pytest.raises(FloatingPointError, match=r"the loss is nan at epoch 1, step \d+ \(training minibatch 0\)"):
        model.train(
            max_epochs=3, batch_size=32, accumulate_grad_batches=2, enable_progress_bar=False, callbacks=[poison]
        )
    after = [*model.module.parameters(), *model.module.buffers()]
    assert all(torch.equal(a, b) for a, b in zip(after, poison.before[(1, 0)], strict=True))


def test_large_finite_gradients_do_not_stop_training():
    class Large(Callback):
        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step == 3:  # finite, but its L2 norm overflows float32
                next(pl_module.module.parameters()).grad.fill_(1e20)

    mdata = _mosaic()
    model = JointVAE(mdata, **MODEL_KWARGS)
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False, callbacks=[Large()])
    assert model.is_trained_


def test_non_finite_gradients_stop_training_before_the_update():
    class Poison(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                module = pl_module.module
                self.before = [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]

        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step == 3:
                pl_module.module.heads["protein"].log_theta.grad[0] = torch.inf

    mdata = _mosaic()
    model = JointVAE(mdata, **MODEL_KWARGS)
    poison = Poison()
    where = r"non-finite gradients at epoch \d, step 3 \(training minibatch \d\) in the protein decoder \(1 tensors"
    with pytest.raises(FloatingPointError, match=where):
        model.train(max_epochs=2, batch_size=32, train_size=1.0, enable_progress_bar=False, callbacks=[poison])
    after = [*model.module.parameters(), *model.module.buffers()]
    # the weights and buffers as they were before the step (its forward pass's statistics are put back)
    assert all(torch.equal(a, b) for a, b in zip(after, poison.before, strict=True))


def test_non_finite_gradients_are_named_by_module():
    check = FiniteLossCheck(["b0"])
    check._minibatches, check._start = [({"batch": torch.zeros(3, 1)}, 2)], (4, 17)
    module = torch.nn.Module()
    module.heads = torch.nn.ModuleDict({"protein": torch.nn.Linear(2, 2)})
    module.heads["protein"].weight.grad = torch.full((2, 2), torch.nan)
    trainer = type("Trainer", (), {"current_epoch": 4, "global_step": 17})()
    pl_module = type("Plan", (), {"module": module})()
    where = r"non-finite gradients at epoch 4, step 17 \(training minibatch 2\) in the protein decoder"
    with pytest.raises(FloatingPointError, match=where):
        check.on_before_optimizer_step(trainer, pl_module, None)


# --------------------------------------------------------------------------------------------- real data, extremes
def _depths_1_to_1e6(counts: sparse.csr_matrix, rng: np.random.Generator) -> sparse.csr_matrix:
    """Rescale each cell to a total drawn log-uniformly in [1, 1e6] (at least one count per cell)."""
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(1)).ravel()
    target = np.exp(rng.uniform(0, np.log(1e6), size=counts.shape[0]))
    target[:3] = [1, 10, 1e6]
    scaled = sparse.diags(target / totals) @ counts
    scaled.data = rng.poisson(scaled.data).astype(np.float64)
    for row in np.flatnonzero(np.asarray(scaled.sum(1)).ravel() == 0):  # keep depth 1 cells at one count
        scaled[row, counts[row].indices[0]] = 1
    scaled.eliminate_zeros()
    return sparse.csr_matrix(scaled)


def test_real_data_with_extreme_depths_and_protein_background_stays_finite(data_dir):
    """BMMC CITE-seq: RNA depths 1 to 1e6 counts per cell; protein with a 1e4-count background in some cells."""
    cite = pengster.datasets.bmmc_cite()
    rng = np.random.default_rng(0)
    rna, prot = cite.mod["rna"], cite.mod["prot"]
    rna.layers["counts"] = _depths_1_to_1e6(rna.layers["counts"], rng)
    background = prot.layers["counts"].toarray() if sparse.issparse(prot.layers["counts"]) else prot.layers["counts"]
    background = np.asarray(background, dtype=np.float64)
    background[::7] += 10_000  # every 7th cell: an extreme ambient background on every antibody
    prot.layers["counts"] = sparse.csr_matrix(background)
    totals = np.asarray(rna.layers["counts"].sum(1)).ravel()
    assert totals.min() == 1 and totals.max() >= 9e5
    JointVAE.setup_mudata(
        cite, modalities={"rna_layer": "rna", "protein_layer": "prot"}, rna_layer="counts", protein_layer="counts"
    )
    scvi.settings.seed = 0
    model = JointVAE(cite, n_latent=8, n_hidden=64)
    model.train(max_epochs=5, batch_size=128, enable_progress_bar=False)
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    assert np.isfinite(model.history["validation_loss"].to_numpy(dtype=float)).all()
    assert np.isfinite(model.get_latent_representation()).all()
    for target in ("rna", "protein"):
        mean, std = model.predict(target=target, n_samples=3, return_std=True)
        assert np.isfinite(mean.to_numpy()).all() and np.isfinite(std.to_numpy()).all()
        assert np.isfinite(model.get_normalized_expression(modality=target).to_numpy()).all()


# --------------------------------------------------------------------------------------------- no data loss
def test_results_read_back_from_h5mu_are_identical_and_still_recognised(uninterrupted, tmp_path):
    mdata, model = uninterrupted
    target = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=0)
    target.obsm["user_embedding"] = np.arange(target.n_obs * 2, dtype=np.float64).reshape(-1, 2)
    written = pengster.tl.write_results(model, target, n_samples=2)
    target.write(tmp_path / "results.h5mu")
    loaded = md.read_h5mu(tmp_path / "results.h5mu")
    for key in [*written["obsm"], "user_embedding"]:
        np.testing.assert_array_equal(np.asarray(loaded.obsm[key]), np.asarray(target.obsm[key]), err_msg=key)
    # a second write into the file's MuData recognises its own keys (no overwrite=True needed) and keeps the user's
    pengster.tl.write_results(model, loaded, n_samples=2)
    np.testing.assert_array_equal(loaded.obsm["user_embedding"], target.obsm["user_embedding"])
    with pytest.raises(ValueError, match=r"obsm\['X_pengster'\].*not written by pengster"):
        fresh = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=0)
        fresh.obsm["X_pengster"] = np.zeros((fresh.n_obs, 3))
        pengster.tl.write_results(model, fresh, n_samples=2)
