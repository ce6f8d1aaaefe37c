"""What ``JointVAE.train`` prints and refuses: no Lightning banners, tips or its ``LeafSpec`` deprecation, nothing
left changed in logging or the warning filters afterwards, and no silent default for ``max_epochs`` below 1."""

from __future__ import annotations

import logging
import warnings

import pytest

from pengster.data import synthetic_mosaic
from pengster.model import JointVAE

NOISE = ("GPU available", "TPU available", "litlogger", "LeafSpec")


@pytest.fixture
def model() -> JointVAE:
    mdata = synthetic_mosaic(n_cells={"multiome": 40, "cite": 40}, n_genes=20, n_peaks=30, n_proteins=6, seed=0)
    JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    return JointVAE(mdata, n_hidden=16, n_latent=4)


@pytest.mark.parametrize("max_epochs", [0, -3, 2.5, True])
def test_train_refuses_max_epochs_below_one(model, max_epochs):
    with pytest.raises(ValueError, match=rf"max_epochs={max_epochs!r}; pass a whole number .* at least 1, or None"):
        model.train(max_epochs=max_epochs, enable_progress_bar=False)
    assert not model.is_trained_


def _logging_state() -> dict:
    names = [name for name in logging.root.manager.loggerDict if name.startswith("lightning")]
    return {
        name: (logger.level, list(logger.filters), list(logger.handlers), logger.propagate, logger.disabled)
        for name in names
        if isinstance(logger := logging.getLogger(name), logging.Logger)
    }


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_train_prints_no_lightning_banners_and_leaves_logging_and_warnings_as_found(model, recwarn):
    # lightning.pytorch does not propagate to the root logger (caplog's): listen on it directly
    records = _Records()
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(records)
    try:
        before, filters_before = _logging_state(), list(warnings.filters)
        model.train(max_epochs=1, batch_size=32, accelerator="cpu", enable_progress_bar=False)
        after, filters_after = _logging_state(), list(warnings.filters)
    finally:
        lightning_logger.removeHandler(records)
    assert model.is_trained_
    for noise in NOISE:
        assert not any(noise in message for message in records.messages), (noise, records.messages)
        assert not any(noise in str(warning.message) for warning in recwarn), (noise, [str(w.message) for w in recwarn])
    # the filter drops the banners only: Lightning's other messages still come through
    assert any("`Trainer.fit` stopped" in message for message in records.messages), records.messages
    assert after == before
    assert filters_after == filters_before
