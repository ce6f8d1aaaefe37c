"""Differential expression, accessibility and protein abundance of a trained JointVAE, with scvi-tools' machinery.

The Bayesian test is scvi-tools' own (``scvi.model.base._de_core._de_core`` and ``DifferentialComputation``); what
is pengster's is which cells enter it: a group's cells that can be decoded for the modality (those that measured one
of the ``source`` modalities), and raw statistics over only the cells that measured the modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scvi
import torch
from scipy import sparse
from scvi.model.base._de_core import _de_core, _fdr_de_prediction

from pengster._constants import REGISTRY_KEYS
from pengster.data._align import has_column


def _mask(selection, names: pd.Index, argument: str) -> np.ndarray:
    """A boolean mask over ``names`` from a boolean mask or integer positions."""
    selection = np.asarray(selection).reshape(-1)
    if selection.dtype == bool:
        if len(selection) != len(names):
            raise ValueError(f"{argument} is a boolean mask of {len(selection)} cells; pass one of {len(names)}.")
        return selection
    mask = np.zeros(len(names), dtype=bool)
    mask[selection.astype(np.int64)] = True
    return mask


def _raw_properties(counts, panel: np.ndarray, measured_features: np.ndarray, idx1, idx2) -> dict[str, np.ndarray]:
    """scvi-tools' ``scrna_raw_counts_properties`` over the cells ``idx1``/``idx2`` (masks), per measured feature.

    A feature enters a cell's statistics only where the cell's panel measured it; NaN where no cell did.
    """
    totals = np.asarray(counts.sum(axis=1)).reshape(-1)
    properties = {}
    for suffix, rows in (("1", idx1), ("2", idx2)):
        sums, nonzero, normalized = (np.zeros(counts.shape[1]) for _ in range(3))
        n_cells = np.zeros(counts.shape[1])
        for code in np.unique(panel[rows]):
            block = counts[np.flatnonzero(rows & (panel == code))]
            scaled = sparse.diags(1e4 / np.maximum(totals[rows & (panel == code)], 1.0)) @ block
            sums += np.asarray(block.sum(axis=0)).reshape(-1)
            nonzero += np.asarray((block != 0).sum(axis=0)).reshape(-1)
            normalized += np.asarray(scaled.sum(axis=0)).reshape(-1)
            n_cells += block.shape[0] * measured_features[code]
        with np.errstate(invalid="ignore", divide="ignore"):
            properties[f"raw_mean{suffix}"] = np.where(n_cells > 0, sums / n_cells, np.nan)
            properties[f"non_zeros_proportion{suffix}"] = np.where(n_cells > 0, nonzero / n_cells, np.nan)
            properties[f"raw_normalized_mean{suffix}"] = np.where(n_cells > 0, normalized / n_cells, np.nan)
    return properties


class DifferentialMixin:
    """``differential_expression`` and ``differential_accessibility`` of :class:`~pengster.model.JointVAE`."""

    def differential_expression(
        self,
        adata=None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | None = None,
        idx2: Sequence[int] | Sequence[bool] | None = None,
        *,
        modality: str | Sequence[str] = "rna",
        source: str | Sequence[str] | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        **kwargs,
    ) -> pd.DataFrame:
        """Differential expression between groups of cells: scvi-tools' ``change``/``vanilla`` test (Boyeau 2019).

        Values are :meth:`get_normalized_expression`'s linear scale at posterior draws of ``z``, so a modality the
        cells did not measure is compared as decoded from their ``source`` modalities.

        Parameters
        ----------
        adata
            MuData (default: the training data).
        groupby
            Column of ``adata.obs`` (the user's MuData) holding the groups.
        group1
            Group(s) compared; default: each group in turn against the rest (or ``group2``).
        group2
            Group compared against; default: all other cells.
        idx1, idx2
            Instead of ``groupby``: the two groups as boolean masks or positions of cells (``idx2`` default: the rest).
        modality
            Modality, or list of modalities whose features share one table (as TOTALVI's genes and proteins).
        source
            Modalities whose posterior is decoded (default: all a cell measured). Cells that measured none of them are
            left out of the test.
        mode, delta, batch_correction, batchid1, batchid2, fdr_target, silent
            As in ``scvi.model.SCVI.differential_expression``.
        batch_size
            Cells per minibatch of the posterior samples (default: scvi-tools' ``settings.batch_size``, 128).
        all_stats
            Add the raw statistics (means, non-zero fractions, normalized means) of the cells that measured the
            modality, per feature over the cells whose dataset measured it (NaN where none did).
        **kwargs
            Passed to ``scvi.model.base.DifferentialComputation.get_bayes_factors`` (e.g. ``pseudocounts``,
            default 1e-6 as MULTIVI's, or ``n_samples_overall``).

        Returns
        -------
        scvi-tools' DataFrame, one row per feature and comparison, plus ``modality`` and each group's
        ``measured_fraction1`` / ``measured_fraction2``: the fraction of its cells that measured the modality.
        """
        self._check_if_trained(warn=False)
        kwargs.setdefault("pseudocounts", 1e-6)
        if kwargs["pseudocounts"] is None:
            raise ValueError("pseudocounts=None (estimated from .X) is not supported; pass a number, e.g. 1e-6.")
        modalities = [modality] if isinstance(modality, str) else list(modality)
        modalities = [self.resolve_modality(m) for m in modalities]
        user = self.mdata if adata is None else adata
        aligned = self._aligned(adata)
        if not aligned.obs_names.equals(user.obs_names):
            raise ValueError("adata's cells are not in the order of its aligned view; pass a MuData with unique obs.")
        comparisons = self._comparisons(user.obs, groupby, group1, group2, idx1, idx2)
        options = {
            "mode": mode, "delta": delta, "batch_size": batch_size, "all_stats": all_stats,
            "batch_correction": batch_correction, "batchid1": batchid1, "batchid2": batchid2, "fdr": fdr_target,
        }  # fmt: skip
        frames = []
        for name1, name2, mask1, mask2 in scvi.utils.track(comparisons, description="DE...", disable=silent):
            parts = [
                self._compare(aligned, m, source, mask1, mask2, (name1, name2), options, kwargs) for m in modalities
            ]
            table = pd.concat(parts)
            if mode == "change":
                table = table.sort_values("proba_de", ascending=False)
                table[f"is_de_fdr_{fdr_target}"] = _fdr_de_prediction(table["proba_de"], fdr=fdr_target).to_numpy()
            table["comparison"], table["group1"], table["group2"] = f"{name1} vs {name2}", name1, name2
            frames.append(table)
        return pd.concat(frames)

    def differential_accessibility(self, adata=None, groupby=None, group1=None, group2=None, idx1=None, idx2=None,
                                   *, source=None, delta: float = 0.05, **kwargs) -> pd.DataFrame:  # fmt: skip
        """Differential accessibility: :meth:`differential_expression` of ``atac`` with MULTIVI's defaults.

        ``delta`` 0.05 and ``pseudocounts`` 1e-6 (MULTIVI's). Besides scvi-tools' columns, MULTIVI's names:
        ``prob_da``, ``is_da_fdr``, ``effect_size`` (``scale2 - scale1``), ``est_prob1/2``, ``emp_prob1/2`` (the
        fraction of measured cells with the peak open) and ``emp_effect``.
        """
        fdr = kwargs.get("fdr_target", 0.05)
        table = self.differential_expression(
            adata, groupby, group1, group2, idx1, idx2, modality="atac", source=source, delta=delta, **kwargs
        )
        if "proba_de" in table:
            table["prob_da"], table["is_da_fdr"] = table["proba_de"], table[f"is_de_fdr_{fdr}"]
        table["effect_size"] = table["scale2"] - table["scale1"]
        table["est_prob1"], table["est_prob2"] = table["scale1"], table["scale2"]
        if "non_zeros_proportion1" in table:
            table["emp_prob1"], table["emp_prob2"] = table["non_zeros_proportion1"], table["non_zeros_proportion2"]
            table["emp_effect"] = table["emp_prob2"] - table["emp_prob1"]
        return table

    # ------------------------------------------------------------------------------------------------ groups
    @staticmethod
    def _comparisons(obs: pd.DataFrame, groupby, group1, group2, idx1, idx2) -> list:
        """``(name1, name2, mask1, mask2)`` of each comparison, checked (see :meth:`differential_expression`)."""
        names = obs.index
        if idx1 is not None:
            mask1 = _mask(idx1, names, "idx1")
            mask2 = ~mask1 if idx2 is None else _mask(idx2, names, "idx2")
            if (mask1 & mask2).any():
                raise ValueError(
                    f"idx1 and idx2 share {int((mask1 & mask2).sum())} cells, e.g. {list(names[mask1 & mask2][:3])}; "
                    "pass disjoint groups of cells."
                )
            for argument, mask in (("idx1", mask1), ("idx2", mask2)):
                if not mask.any():
                    raise ValueError(f"{argument} selects no cell; pass at least one cell in each group.")
            return [("idx1", "Rest" if idx2 is None else "idx2", mask1, mask2)]
        if groupby is None:
            raise ValueError("pass groupby=<a column of mdata.obs> (with group1/group2), or idx1 (and idx2).")
        if groupby not in obs.columns:
            raise KeyError(
                f"groupby={groupby!r} is not a column of the MuData's .obs; pass one of {list(obs.columns)} "
                "(a column of a modality's .obs must be copied to mdata.obs, e.g. with mdata.pull_obs())."
            )
        labels = obs[groupby]
        present = list(pd.unique(labels.dropna()))
        wanted = [group1] if isinstance(group1, str) else (present if group1 is None else list(group1))
        categories = list(labels.cat.categories) if isinstance(labels.dtype, pd.CategoricalDtype) else present
        for argument, groups in (("group1", wanted), ("group2", [] if group2 is None else [group2])):
            unknown = [g for g in groups if g not in categories]
            if unknown:
                raise ValueError(f"{argument}: {unknown} are not groups of obs[{groupby!r}]; pass some of {present}.")
            empty = [g for g in groups if g not in present]
            if empty:
                raise ValueError(
                    f"{argument}: {empty} have no cells in obs[{groupby!r}]; pass groups with cells, among {present}."
                )
        if group1 is None and group2 is None and len(present) < 2:
            raise ValueError(f"obs[{groupby!r}] has a single group {present}; pass a column with two groups or more.")
        comparisons = []
        for g1 in wanted:
            mask1 = (labels == g1).to_numpy()
            mask2 = (labels.notna() & ~mask1).to_numpy() if group2 is None else (labels == group2).to_numpy()
            if g1 == group2:
                raise ValueError(f"group1 and group2 are both {g1!r}; pass two different groups.")
            comparisons.append((g1, "Rest" if group2 is None else group2, mask1, mask2))
        return comparisons

    def _decodable(self, aligned, modality: str, source) -> np.ndarray:
        """Cells that measured one of ``source`` (default: any modality): those decoded for ``modality``."""
        sources = list(self.modalities) if source is None else self._sources(modality, source)
        return np.any([aligned.obs[has_column(m)].to_numpy() > 0 for m in sources], axis=0)

    # ------------------------------------------------------------------------------------------------ one modality
    def _compare(self, aligned, modality, source, mask1, mask2, names, options, kwargs) -> pd.DataFrame:
        """scvi-tools' test of ``modality`` between the decodable cells of two groups."""
        measured = aligned.obs[has_column(modality)].to_numpy() > 0
        decodable = self._decodable(aligned, modality, source)
        for name, mask in zip(names, (mask1, mask2), strict=True):
            if not (mask & decodable).any():
                raise ValueError(
                    f"group {name!r}: none of its {int(mask.sum())} cells measured {modality!r} or a source "
                    f"modality ({'all of them' if source is None else source}), so none can be decoded; pass "
                    f"source=<modalities these cells measured> (the model has {list(self.modalities)})."
                )
        sources = None if source is None else self._sources(modality, source)
        manager = self.get_anndata_manager(aligned, required=True)
        key = self.modalities[modality]
        counts = sparse.csr_matrix(manager.get_from_registry(REGISTRY_KEYS.counts(modality)))
        panel = np.asarray(manager.get_from_registry(REGISTRY_KEYS.PANEL)).reshape(-1).astype(np.int64)
        features = self.module.panel_features(modality).cpu().numpy()

        def model_fn(adata, indices, transform_batch=None, n_samples_overall=None):
            return self._sampled_normalized(adata, indices, modality, sources, transform_batch, n_samples_overall,
                                            options["batch_size"])  # fmt: skip

        def all_stats_fn(_manager, _idx1, _idx2):
            return _raw_properties(counts, panel, features, mask1 & measured, mask2 & measured)

        table = _de_core(
            adata_manager=manager, model_fn=model_fn, representation_fn=None, groupby=None, group1=None, group2=None,
            idx1=mask1 & decodable, idx2=mask2 & decodable, all_stats=options["all_stats"], all_stats_fn=all_stats_fn,
            col_names=aligned.mod[key].var_names, mode=options["mode"], batchid1=options["batchid1"],
            batchid2=options["batchid2"], delta=options["delta"], batch_correction=options["batch_correction"],
            fdr=options["fdr"], silent=True, **kwargs,
        )  # fmt: skip
        table["modality"] = modality
        table["measured_fraction1"] = measured[mask1].mean()
        table["measured_fraction2"] = measured[mask2].mean()
        return table

    @torch.inference_mode()
    def _sampled_normalized(self, adata, indices, modality, sources, transform_batch, n_samples, batch_size):
        """``n_samples`` cells drawn from ``indices`` (with replacement), each decoded at one posterior draw of ``z``.

        The linear scale of :meth:`get_normalized_expression` (RNA: frequencies), as scvi-tools' differential
        expression samples it; array ``(n_samples, n_features)``. Every feature is decoded for every cell (RNA:
        shares of the whole gene set), so groups of cells from runs with different gene panels compare the same
        quantity, where their own panels' shares would be 0 at the genes the panel lacks.
        """
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        # reproducible without touching torch's global generator: seeded by scvi-tools' seed and the cells
        rng = np.random.default_rng([scvi.settings.seed or 0, len(rows), int(rows.sum())])
        if n_samples is not None:
            rows = np.sort(rng.choice(rows, n_samples))
        generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        batches = self._batch_codes(transform_batch)
        # scvi-tools' minibatch (128 cells), as MULTIVI's and TOTALVI's samplers: each minibatch makes some twenty
        # arrays of cells x features, and at 1,024 cells x 10,000 peaks their 41 MB each doubled the call's CPU time
        batch_size = batch_size or scvi.settings.batch_size
        values, noise, start = [], None, 0
        for tensors in self._minibatches(adata, rows, batch_size):
            posterior = self.module.posterior(tensors, sources)
            qz = posterior.qz
            if noise is None:
                # one draw for all the cells: the samples do not depend on the minibatch size
                shape = (len(rows), qz.loc.shape[-1])
                noise = torch.randn(shape, generator=generator, device=qz.loc.device, dtype=qz.loc.dtype)
            z = qz.loc + qz.scale * noise[start : start + qz.loc.shape[0]]
            start += qz.loc.shape[0]
            value, _ = self.module.readout(
                modality, z, tensors, scale="normalized", state=posterior.states[modality],
                batches=batches, library_size=1.0, every_feature=True,
            )  # fmt: skip
            values.append(value.cpu().numpy())
        return np.concatenate(values)
