"""The one writer of a JointVAE's results into the user's MuData."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from mudata import MuData

from pengster._constants import MODALITIES
from pengster._version import __version__

logger = logging.getLogger(__name__)

MAX_DEFAULT_PEAKS = 10_000
"""``targets=None`` leaves out a modality whose table entry says ``wide`` (``atac``) when it has more features than
this (a cells x peaks prediction of an atlas is tens of GB); name it in ``targets`` (with ``features`` for a subset of
peaks) to write it."""
DTYPES = (np.float32, np.float16)


def default_targets(model) -> list[str]:
    """The modalities ``write_results`` predicts and denoises by default (see ``MAX_DEFAULT_PEAKS`` (10,000))."""

    def left_out(modality: str) -> bool:
        n_features = model.adata.mod[model.modalities[modality]].n_vars
        return MODALITIES[modality].wide and n_features > MAX_DEFAULT_PEAKS

    return [m for m in model.modalities if not left_out(m)]


def _planned_keys(model, mdata: MuData, key_added: str, targets: Sequence[str], features) -> dict[str, list[str]]:
    obsm = [f"X_{key_added}"] + [f"X_{key_added}_{modality}" for modality in model.modalities]
    if len(model.modalities) > 1:
        for modality in targets:
            obsm += [f"{key_added}_pred_{modality}", f"{key_added}_pred_{modality}_std"]
    # a query mapped onto a reference may lack a modality: nothing measured, nothing denoised; a layer holds every
    # feature, so a modality whose features were chosen gets none
    layers = [
        f"{model.modalities[modality]}/{key_added}_denoised"
        for modality in targets
        if model.modalities[modality] in mdata.mod and modality not in features
    ]
    return {"obsm": obsm, "layers": layers, "uns": [key_added]}


def _check_clashes(mdata: MuData, keys: dict, key_added: str, overwrite: bool) -> None:
    written_before = set()
    if key_added in mdata.uns and isinstance(mdata.uns[key_added], dict):
        written_before = set(np.asarray(mdata.uns[key_added].get("written", [])).tolist())
    clashes = [f"obsm[{k!r}]" for k in keys["obsm"] if k in mdata.obsm and k not in written_before]
    for entry in keys["layers"]:
        mod_key, layer = entry.split("/")
        if layer in mdata.mod[mod_key].layers and entry not in written_before:
            clashes.append(f"mod[{mod_key!r}].layers[{layer!r}]")
    if key_added in mdata.uns and not written_before:
        clashes.append(f"uns[{key_added!r}]")
    if clashes and not overwrite:
        raise ValueError(
            f"mdata already holds {clashes}, not written by pengster.tl.write_results; pass overwrite=True to "
            f"replace them or key_added=<another prefix>."
        )


def _feature_columns(model, mdata: MuData, modality: str, features: Mapping[str, Sequence[str]]) -> pd.Index:
    names = model.adata.mod[model.modalities[modality]].var_names
    if modality not in features:
        return names
    wanted = pd.Index(features[modality]).astype(str)
    missing = wanted[~wanted.isin(names)]
    if len(missing):
        raise ValueError(
            f"features[{modality!r}] has {len(missing)} names that are not features of the model's {modality!r} "
            f"(e.g. {list(missing[:3])}); pass names from mdata.mod[{model.modalities[modality]!r}].var_names."
        )
    return wanted


def write_results(
    model,
    mdata: MuData,
    *,
    targets: Sequence[str] | None = None,
    features: Mapping[str, Sequence[str]] | None = None,
    key_added: str = "pengster",
    n_samples: int | None = None,
    dtype: type = np.float32,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> dict[str, list[str]]:
    """Write a trained :class:`~pengster.model.JointVAE`'s embeddings, denoised values and predictions.

    Writes exactly these keys (``<key>`` is ``key_added``) and nothing else:

    - ``mdata.obsm['X_<key>']``: joint latent mean, all cells.
    - ``mdata.obsm['X_<key>_<modality>']``: latent from that modality alone; NaN rows where it was not measured.
    - ``mdata[mod].layers['<key>_denoised']``: denoised values of the cells of that modality, all its features, for
      each modality of ``targets`` that ``mdata`` holds (a query mapped onto a reference may lack some) and that
      ``features`` does not restrict.
    - ``mdata.obsm['<key>_pred_<modality>']``: DataFrame, all cells x the chosen features of each modality of
      ``targets``, predicted from the other modalities only (NaN rows for cells that have no other modality);
      written only when the model has two modalities or more.
    - ``mdata.obsm['<key>_pred_<modality>_std']``: its predictive standard deviation (see
      :meth:`~pengster.model.JointVAE.predict`).
    - ``mdata.uns['<key>']``: model parameters, package version, and the list of keys written.

    Scales: rna log1p of counts per 10k, atac accessibility probability, protein CLR of counts. The values are
    computed a minibatch of cells at a time straight into the arrays that are stored, so memory beyond those
    outputs does not grow with the data.

    Parameters
    ----------
    model
        A trained JointVAE.
    mdata
        The MuData the model was set up with, or another one with the same modalities and features.
    targets
        Modalities to predict and denoise. Default: all, except ``atac`` when it has more than
        ``MAX_DEFAULT_PEAKS`` (10,000) peaks (100k cells x 100k peaks would be 40 GB of float32 for the prediction and
        as much for its std); pass ``targets=["rna", "atac", ...]`` to include it.
    features
        Modality -> feature names to predict (default: all). A layer holds every feature of its modality, so a
        modality named here gets no denoised layer (call ``model.get_denoised_values(gene_list=...)``).
    key_added
        Prefix of every key.
    n_samples
        Posterior draws of ``z`` for the latent part of the predictive std (default: ``predict``'s).
    dtype
        ``np.float32`` (default), or ``np.float16`` to halve the memory of predictions and denoised values:
        float16 keeps 11 significant bits, a relative error of at most 2**-11 (0.05%; at most 2.4e-4 absolute on
        the probability scale of ATAC, 0.004 at a log1p or CLR value of 8).
    batch_size
        Cells per minibatch (default: the getters').
    overwrite
        Replace keys that exist but that an earlier call of this function did not write.

    Returns
    -------
    The keys written, by attribute (``obsm``, ``layers`` as ``'<mod>/<layer>'``, ``uns``).
    """
    if np.dtype(dtype) not in [np.dtype(d) for d in DTYPES]:
        raise ValueError(f"dtype={dtype!r}; pass np.float32 or np.float16.")
    targets = default_targets(model) if targets is None else [targets] if isinstance(targets, str) else list(targets)
    targets = [model.resolve_modality(modality, argument="targets") for modality in targets]
    features = {model.resolve_modality(m, argument="features"): names for m, names in dict(features or {}).items()}
    unknown = sorted(set(features) - set(targets))
    if unknown:
        raise ValueError(f"features names {unknown}, which are not in targets={targets}; add them to targets.")
    keys = _planned_keys(model, mdata, key_added, targets, features)
    _check_clashes(mdata, keys, key_added, overwrite)

    # the model's view of mdata has the cells of mdata.obs_names, in that order
    order = np.arange(mdata.n_obs)
    results = {f"X_{key_added}": model.get_latent_representation(mdata, order, batch_size=batch_size)}
    for modality in model.modalities:
        results[f"X_{key_added}_{modality}"] = model.get_latent_representation(
            mdata, order, batch_size=batch_size, modality=modality
        )
    predictions = {}
    std_kwargs = {} if n_samples is None else {"n_samples": n_samples}
    for modality in targets if len(model.modalities) > 1 else []:
        columns = _feature_columns(model, mdata, modality, features)
        mean = np.empty((mdata.n_obs, len(columns)), dtype=dtype)
        std = np.empty_like(mean)
        every = modality not in features
        model.predict(
            mdata,
            order,
            target=modality,
            return_std=True,
            batch_size=batch_size,
            out=mean if every else _Columns(mean, columns, model, modality),
            out_std=std if every else _Columns(std, columns, model, modality),
            **std_kwargs,
        )
        predictions[f"{key_added}_pred_{modality}"] = pd.DataFrame(mean, index=mdata.obs_names, columns=columns)
        predictions[f"{key_added}_pred_{modality}_std"] = pd.DataFrame(std, index=mdata.obs_names, columns=columns)
    denoised = {}
    for entry in keys["layers"]:
        mod_key = entry.split("/")[0]
        modality = next(m for m, key in model.modalities.items() if key == mod_key)
        cells = mdata.obs_names.get_indexer(mdata.mod[mod_key].obs_names)
        values = np.empty((len(cells), mdata.mod[mod_key].n_vars), dtype=dtype)
        model.get_denoised_values(mdata, cells, modality=modality, batch_size=batch_size, out=values)
        denoised[mod_key] = values

    # everything is computed: only now touch the user's object
    for key, value in {**results, **predictions}.items():
        mdata.obsm[key] = value
    for mod_key, values in denoised.items():
        mdata.mod[mod_key].layers[f"{key_added}_denoised"] = values
    written = [k for k in keys["obsm"] if k in results or k in predictions] + keys["layers"]
    mdata.uns[key_added] = {
        "version": __version__,
        "model": json.dumps(model.init_params_, default=str),
        "modalities": json.dumps(model.modalities),
        "scales": json.dumps({m: MODALITIES[m].scale for m in model.modalities}),
        "written": written,
    }
    logger.info("wrote %s", written)
    return {"obsm": [k for k in written if "/" not in k], "layers": keys["layers"], "uns": [key_added]}


class _Columns:
    """An ``out=`` target that keeps the chosen feature columns of each block, in the chosen order."""

    def __init__(self, values: np.ndarray, columns: pd.Index, model, modality: str):
        names = model.adata.mod[model.modalities[modality]].var_names
        self.values = values
        self.positions = names.get_indexer(columns)
        self.shape = (values.shape[0], len(names))

    def __setitem__(self, rows, block: np.ndarray) -> None:
        self.values[rows] = block[:, self.positions]
