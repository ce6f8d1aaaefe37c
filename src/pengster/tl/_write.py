"""The one writer of a JointVAE's results into the user's MuData."""

from __future__ import annotations

import json
import logging

import numpy as np
from mudata import MuData

logger = logging.getLogger(__name__)


def _planned_keys(model, mdata: MuData, key_added: str) -> dict[str, list[str]]:
    obsm = [f"X_{key_added}"]
    for modality in model.modalities:
        obsm += [f"X_{key_added}_{modality}", f"{key_added}_pred_{modality}", f"{key_added}_pred_{modality}_std"]
    # a query mapped onto a reference may lack a modality: nothing measured, nothing denoised
    layers = [f"{mod_key}/{key_added}_denoised" for mod_key in model.modalities.values() if mod_key in mdata.mod]
    return {"obsm": obsm, "layers": layers, "uns": [key_added]}


def write_results(
    model,
    mdata: MuData,
    *,
    key_added: str = "pengster",
    n_samples: int = 20,
    overwrite: bool = False,
) -> dict[str, list[str]]:
    """Write a trained :class:`~pengster.model.JointVAE`'s embeddings, denoised values and predictions.

    Writes exactly these keys (``<key>`` is ``key_added``) and nothing else:

    - ``mdata.obsm['X_<key>']``: joint latent mean, all cells.
    - ``mdata.obsm['X_<key>_<modality>']``: latent from that modality alone; NaN rows where it was not measured.
    - ``mdata[mod].layers['<key>_denoised']``: denoised values of the cells of that modality (for the modalities
      ``mdata`` holds: a query mapped onto a reference may lack some).
    - ``mdata.obsm['<key>_pred_<modality>']``: DataFrame, all cells x that modality's features, predicted from
      the other modalities only (NaN rows for cells that have no other modality).
    - ``mdata.obsm['<key>_pred_<modality>_std']``: its predictive standard deviation (see
      :meth:`~pengster.model.JointVAE.predict`).
    - ``mdata.uns['<key>']``: model parameters, package version, and the list of keys written.

    Scales: rna log1p of counts per 10k, atac accessibility probability, protein CLR of counts.

    Parameters
    ----------
    model
        A trained JointVAE.
    mdata
        The MuData the model was set up with, or another one with the same modalities and features.
    key_added
        Prefix of every key.
    n_samples
        Posterior samples for the predictions and their standard deviation.
    overwrite
        Replace keys that exist but that an earlier call of this function did not write.

    Returns
    -------
    The keys written, by attribute (``obsm``, ``layers`` as ``'<mod>/<layer>'``, ``uns``).
    """
    import pengster

    keys = _planned_keys(model, mdata, key_added)
    written_before = set()
    if key_added in mdata.uns and isinstance(mdata.uns[key_added], dict):
        written_before = set(np.asarray(mdata.uns[key_added].get("written", [])).tolist())
    clashes = [f"obsm[{k!r}]" for k in keys["obsm"] if k in mdata.obsm and k not in written_before]
    clashes += [
        f"mod[{entry.split('/')[0]!r}].layers[{entry.split('/')[1]!r}]"
        for entry in keys["layers"]
        if entry.split("/")[1] in mdata.mod[entry.split("/")[0]].layers and entry not in written_before
    ]
    if key_added in mdata.uns and not written_before:
        clashes.append(f"uns[{key_added!r}]")
    if clashes and not overwrite:
        raise ValueError(
            f"mdata already holds {clashes}, not written by pengster.tl.write_results; pass overwrite=True to "
            f"replace them or key_added=<another prefix>."
        )

    results = {f"X_{key_added}": model.get_latent_representation(mdata)}
    for modality in model.modalities:
        results[f"X_{key_added}_{modality}"] = model.get_latent_representation(mdata, modality=modality)
    predictions = {}
    for modality in model.modalities:
        if len(model.modalities) < 2:
            break
        mean, std = model.predict(mdata, target=modality, n_samples=n_samples, return_std=True)
        predictions[f"{key_added}_pred_{modality}"] = mean
        predictions[f"{key_added}_pred_{modality}_std"] = std
    denoised = {
        mod_key: model.get_normalized_expression(mdata, modality=modality)
        for modality, mod_key in model.modalities.items()
        if mod_key in mdata.mod
    }

    # everything is computed: only now touch the user's object
    for key, value in results.items():
        mdata.obsm[key] = value
    for key, frame in predictions.items():
        frame = frame.copy()
        frame.columns = frame.columns.astype(str)
        mdata.obsm[key] = frame
    for mod_key, frame in denoised.items():
        mdata.mod[mod_key].layers[f"{key_added}_denoised"] = frame.to_numpy(dtype=np.float32)
    written = [k for k in keys["obsm"] if k in results or k in predictions] + keys["layers"]
    mdata.uns[key_added] = {
        "version": pengster.__version__,
        "model": json.dumps(model.init_params_, default=str),
        "modalities": json.dumps(model.modalities),
        "scales": json.dumps({"rna": "log1p counts per 10k", "atac": "probability", "protein": "CLR of counts"}),
        "written": written,
    }
    logger.info("wrote %s", written)
    return {"obsm": [k for k in written if "/" not in k], "layers": keys["layers"], "uns": [key_added]}
