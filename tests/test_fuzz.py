"""Property-based fuzzing: setup_mudata -> train(max_epochs=1) -> getters over random mosaics.

Every outcome is either success with finite outputs of the right shape, or a documented error raised by pengster's
own checks (ValueError, KeyError or TypeError from pengster's code, naming the object). Never a NaN output, never an
exception from deep inside torch, scipy or scvi-tools. And most examples train (at least ``MIN_TRAINED_SHARE``), so
that a generator, or a check, that rejects every input fails the test instead of passing it vacuously.
``PENGSTER_FUZZ_EXAMPLES`` sets the number of examples.
"""

from __future__ import annotations

import os
import random
import traceback
import warnings
from collections import Counter
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scvi
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from scipy import sparse

import pengster
from pengster.model import JointVAE

torch.set_num_threads(1)

N_EXAMPLES = int(os.environ.get("PENGSTER_FUZZ_EXAMPLES", "120"))
MIN_TRAINED_SHARE = 0.6
"""Share of the generated examples that must train: most are clean data, a few carry one bad entry."""
SOURCE = Path(pengster.__file__).parent
MOD_KEYS = {"rna": "rna", "atac": "atac", "protein": "prot"}
PATTERNS = [("rna",), ("rna", "atac"), ("rna", "protein"), ("atac",), ("protein",), ("rna", "atac", "protein")]
DTYPES = [np.int32, np.int64, np.uint16, np.float32, np.float64]
# mostly clean; sometimes one entry a user's pipeline could have left behind (a documented error)
CORRUPTIONS = [None] * 40 + [0.5, -1.0, np.nan, np.inf, 2.0**40]


@st.composite
def datasets(draw) -> tuple[dict, dict]:
    """Per dataset, its modalities (mod key -> AnnData) and number of batches; and the settings of the run."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_features = {"rna": draw(st.integers(1, 8)), "atac": draw(st.integers(1, 8)), "protein": draw(st.integers(1, 5))}
    result = {}
    for index in range(draw(st.integers(1, 3))):
        pattern = draw(st.sampled_from(PATTERNS))
        n_cells = draw(st.integers(1, 12))
        mods = {}
        for modality in pattern:
            keep = rng.random(n_features[modality]) < draw(st.floats(0.5, 1.0))  # panels differ between datasets
            keep[rng.integers(n_features[modality])] = True
            names = [f"{modality}{j}" for j in np.flatnonzero(keep)]
            rate = draw(st.floats(0.0, 30.0)) * (rng.random((n_cells, len(names))) < draw(st.floats(0.0, 1.0)))
            counts = rng.poisson(rate).astype(draw(st.sampled_from(DTYPES)))
            corruption = draw(st.sampled_from(CORRUPTIONS))
            if corruption is not None:
                counts = counts.astype(np.float64)
                counts.flat[rng.integers(counts.size)] = corruption
            layout = draw(st.sampled_from(["dense", "csr", "csc"]))
            matrix = counts if layout == "dense" else getattr(sparse, f"{layout}_matrix")(counts)
            mods[MOD_KEYS[modality]] = ad.AnnData(
                X=matrix,
                obs=pd.DataFrame(index=[f"d{index}_c{i}" for i in range(n_cells)]),
                var=pd.DataFrame(index=names),
            )
        # the MuData is built in the test: building one touches the `random` module, which strategies must not
        result[f"data{index}"] = (mods, draw(st.integers(1, 2)))
    run = {"batch_size": draw(st.integers(2, 64)), "n_latent": draw(st.integers(1, 4))}
    return result, run


def _raised_by_pengster(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).is_relative_to(SOURCE)


def _build(mods: dict, n_batches: int) -> md.MuData:
    mdata = md.MuData(mods)
    mdata.obs["batch"] = [f"b{i % n_batches}" for i in range(mdata.n_obs)]
    return mdata


def _check_run(parts: dict, run: dict) -> str:
    mdata = pengster.data.mosaic({name: _build(*spec) for name, spec in parts.items()})
    modalities = {m: key for m, key in MOD_KEYS.items() if key in mdata.mod}
    scvi.settings.seed = 0
    try:
        JointVAE.setup_mudata(mdata, modalities={f"{m}_layer": k for m, k in modalities.items()}, batch_key="batch")
        model = JointVAE(mdata, n_latent=run["n_latent"], n_hidden=8)
        model.train(max_epochs=1, batch_size=run["batch_size"], enable_progress_bar=False, early_stopping=False)
    except (ValueError, KeyError, TypeError) as error:
        assert _raised_by_pengster(error), "".join(traceback.format_exception(error)[-6:])
        assert any(name in str(error) for name in ("mdata", "adata", "JointVAE")), str(error)
        return f"refused ({type(error).__name__})"
    latent = model.get_latent_representation()
    assert latent.shape == (mdata.n_obs, run["n_latent"]) and np.isfinite(latent).all()
    for modality, key in modalities.items():
        measured = mdata.obs_names.isin(mdata.mod[key].obs_names)
        alone = model.get_latent_representation(modality=modality)
        assert np.isfinite(alone[measured]).all() and np.isnan(alone[~measured]).all()
        denoised = model.get_normalized_expression(modality=modality)
        # every cell: decoded from what it measured, imputed where it did not measure the modality
        assert denoised.shape == (mdata.n_obs, mdata.mod[key].n_vars)
        assert np.isfinite(denoised.loc[mdata.mod[key].obs_names].to_numpy()).all()
        if len(modalities) < 2:
            continue
        mean, std = model.predict(target=modality, n_samples=2, return_std=True)
        assert mean.shape == (mdata.n_obs, mdata.mod[key].n_vars)
        others = [mdata.obs_names.isin(mdata.mod[k].obs_names) for m, k in modalities.items() if m != modality]
        has_source = np.logical_or.reduce(others)
        for frame in (mean, std):
            values = frame.to_numpy()
            assert np.isfinite(values[has_source]).all() and np.isnan(values[~has_source]).all()
    return "trained"


def test_fuzz_setup_train_predict():
    """Each example trains to finite outputs or is refused with a documented error; most examples train."""
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=N_EXAMPLES,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: it can take minutes
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=datasets())
    def check(case):
        parts, run = case
        state = random.getstate()  # scvi's seed reseeds `random`, which Hypothesis manages between examples
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcomes[_check_run(parts, run)] += 1
        finally:
            random.setstate(state)

    check()
    total = outcomes.total()
    assert total >= min(N_EXAMPLES, 10), f"only {total} examples ran: {dict(outcomes)}"
    assert outcomes["trained"] >= MIN_TRAINED_SHARE * total, (
        f"{outcomes['trained']} of {total} examples trained, fewer than {MIN_TRAINED_SHARE:.0%}: {dict(outcomes)}"
    )
