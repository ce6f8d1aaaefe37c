"""MULTIVI's and TOTALVI's other post-training getters on :class:`~pengster.model.JointVAE`.

Each decodes through the module's entrances (``posterior``, ``distribution``) one minibatch at a time; a cell is
decoded at its own batch and, for count modalities, at its own depth (cells that did not measure the modality: the
median depth of the training cells that did).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy import sparse, stats
from torch.distributions import Gamma, Normal

from pengster._constants import REGISTRY_KEYS
from pengster.module._atac import FactorPoisson

from ._differential import DifferentialMixin


def _accessibility(px):
    return px.accessibility if isinstance(px, FactorPoisson) else px


def _gamma_rate(mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """A draw of the Gamma-distributed rate of a negative binomial (scVI's denoised samples)."""
    return Gamma(theta, theta / mean.clamp_min(1e-8)).sample()


class JointVAEAnalysesMixin(DifferentialMixin):
    """Getters of MULTIVI and TOTALVI: accessibility, foreground probability, likelihoods, samples, correlations."""

    def _stream(
        self,
        adata,
        indices,
        modality: str,
        read: Callable,
        *,
        source=None,
        n_samples: int = 1,
        use_mean: bool = True,
        transform_batch=None,
        library=None,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """``read(px, posterior)`` -> tuple of ``(n_cells, n_features)`` tensors, at each draw, per minibatch.

        Returns one array per element of ``read``'s tuple, shape ``(n_draws, n_cells, n_features)``; rows of cells
        that measured none of ``source`` are NaN. ``library``: a number, or None for each cell's own depth.
        """
        self._check_if_trained(warn=False)
        sources = None if source is None else self._sources(modality, source)
        batches = self._batch_codes(transform_batch)
        typical = self._typical_library(modality, batch_size) if library is None else None
        parts = []
        for tensors in self._minibatches(adata, indices, batch_size):
            posterior = self.module.posterior(tensors, sources)
            depth = library
            if depth is None:
                depth = torch.where(posterior.has[modality].view(-1, 1) > 0, posterior.libraries[modality], typical)
                size_factor = tensors.get(REGISTRY_KEYS.SIZE_FACTOR)
                if modality == "rna" and size_factor is not None:
                    depth = torch.where(posterior.has[modality].view(-1, 1) > 0, size_factor.to(depth), depth)
            zs = (
                [posterior.qz.loc] if use_mean and n_samples == 1 else [posterior.qz.sample() for _ in range(n_samples)]
            )
            draws = []
            for z in zs:
                codes = [None] if batches is None else batches
                outputs = []
                for code in codes:
                    index = None if code is None else torch.full_like(tensors[REGISTRY_KEYS.BATCH], code).long()
                    px = self.module.distribution(
                        modality, z, tensors, library=depth, state=posterior.states[modality], batch_index=index
                    )
                    outputs.append(read(px, posterior))
                draws.append([sum(o[i] for o in outputs) / len(outputs) for i in range(len(outputs[0]))])
            keep = posterior.available.view(-1, 1)
            parts.append(
                [torch.stack([torch.where(keep, d[i], torch.nan) for d in draws]) for i in range(len(draws[0]))]
            )
        return [torch.cat([p[i] for p in parts], 1).cpu().numpy() for i in range(len(parts[0]))]

    def _features(self, adata, indices, modality: str, wanted, argument: str):
        aligned = self._aligned(adata)
        features = aligned.mod[self.modalities[modality]].var_names
        rows = self._rows(aligned, indices)
        if wanted is None:
            return aligned.obs_names[rows], features, slice(None)
        columns = features.get_indexer(pd.Index(wanted))
        if (columns < 0).any():
            missing = list(pd.Index(wanted)[columns < 0][:5])
            raise ValueError(
                f"{argument} has features that {modality!r} does not have, e.g. {missing}; pass names of "
                f"mdata.mod[{self.modalities[modality]!r}].var_names."
            )
        return aligned.obs_names[rows], features[columns], columns

    @torch.inference_mode()
    def get_normalized_accessibility(
        self, adata: MuData | None = None, indices: Sequence[int] | None = None, n_samples_overall: int | None = None,
        region_list: Sequence[str] | None = None, transform_batch: str | Sequence[str] | None = None,
        use_z_mean: bool = True, threshold: float | None = None, normalize_cells: bool = False,
        normalize_regions: bool = False, batch_size: int | None = None, return_numpy: bool = False,
        *, source: str | Sequence[str] | None = None,
    ) -> pd.DataFrame | np.ndarray | sparse.csr_matrix:  # fmt: skip
        """Accessibility as MULTIVI's method of this name returns it, shape ``(n_cells, n_regions)``.

        The decoder's ``sigmoid(f(z, s))``, without the region and cell factors (MULTIVI's convention);
        ``normalize_regions`` multiplies each region's factor ``sigmoid(region_logit)`` back in, ``normalize_cells``
        each cell's factor (:meth:`get_library_size_factors`); with both, the probability of an open peak of
        :meth:`get_normalized_expression`. ``threshold`` in ``[0, 1]``: values below it are 0, and a
        ``scipy.sparse`` CSR matrix (or a sparse DataFrame) is returned. ``source``: modalities decoded from.
        """
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"threshold={threshold}; pass a threshold between 0 and 1 (or None).")
        aligned = self._aligned(adata)
        if n_samples_overall is not None:
            indices = np.random.default_rng(0).choice(self._rows(aligned, indices), n_samples_overall)
        obs_names, regions, columns = self._features(adata, indices, "atac", region_list, "region_list")

        def read(px, _):
            px = _accessibility(px)
            value = torch.sigmoid(px.logits.float())
            value = value * torch.sigmoid(px.region_logit) if normalize_regions else value
            return ((value * px.cell_factor if normalize_cells else value)[:, columns],)

        (values,) = self._stream(adata, indices, "atac", read, source=source, use_mean=use_z_mean,
                                 transform_batch=transform_batch, library=1.0, batch_size=batch_size)  # fmt: skip
        values = values[0]
        if threshold is not None:
            values = sparse.csr_matrix(np.where(values < threshold, 0.0, values))
            if return_numpy:
                return values
            return pd.DataFrame.sparse.from_spmatrix(values, index=obs_names, columns=regions)
        return values if return_numpy else pd.DataFrame(values, index=obs_names, columns=regions)

    @torch.inference_mode()
    def get_library_size_factors(
        self, adata=None, indices=None, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Per-cell depth, as MULTIVI's: ``{"expression": RNA total counts, "accessibility": ATAC cell factor}``.

        The ATAC cell factor is the one the decoder uses: encoded from the cell's peaks, or predicted from its other
        modalities where it has no ATAC. RNA: the observed total over the measured genes (NaN without RNA). A
        modality the model lacks is left out.
        """
        self._check_if_trained(warn=False)
        factors = {"expression": [], "accessibility": []}
        for tensors in self._minibatches(adata, indices, batch_size):
            posterior = self.module.posterior(tensors)
            if "rna" in self.modalities:
                measured = posterior.has["rna"] > 0
                factors["expression"].append(torch.where(measured, posterior.libraries["rna"].view(-1), torch.nan))
            if "atac" in self.modalities:
                factors["accessibility"].append(posterior.states["atac"].view(-1))
        return {key: torch.cat(values).cpu().numpy() for key, values in factors.items() if values}

    @torch.inference_mode()
    def get_region_factors(self) -> np.ndarray:
        """Each region's factor ``sigmoid(region_logit)``, shape ``(n_regions,)`` (MULTIVI's region factors)."""
        self._check_if_trained(warn=False)
        return torch.sigmoid(self.module.heads["atac"].region_logit).detach().cpu().numpy()

    @torch.inference_mode()
    def get_protein_foreground_probability(
        self, adata=None, indices=None, transform_batch=None, protein_list=None, n_samples: int = 1,
        batch_size: int | None = None, use_z_mean: bool = True, return_mean: bool = True,
        return_numpy: bool | None = None, *, source=None,
    ) -> pd.DataFrame | np.ndarray:  # fmt: skip
        """TOTALVI's probability that each protein count is foreground, ``1 - P(background)``.

        Array or DataFrame of shape ``(n_cells, n_proteins)`` :cite:p:`gayoso2021totalvi`.

        With ``n_samples > 1`` and not ``return_mean``: every draw, ``(n_samples, n_cells, n_proteins)``.
        """
        obs_names, proteins, columns = self._features(adata, indices, "protein", protein_list, "protein_list")
        head = self.module.heads["protein"]
        (values,) = self._stream(
            adata, indices, "protein", lambda px, _: (head.foreground_probability(px)[:, columns],), source=source,
            n_samples=n_samples, use_mean=use_z_mean, transform_batch=transform_batch, library=1.0,
            batch_size=batch_size,
        )  # fmt: skip
        if n_samples > 1 and not return_mean:
            return values
        values = values.mean(0)
        return values if return_numpy else pd.DataFrame(values, index=obs_names, columns=proteins)

    @torch.inference_mode()
    def get_likelihood_parameters(
        self, adata=None, indices=None, n_samples: int = 1, give_mean: bool = False, batch_size: int | None = None,
        *, modality: str = "rna",
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """The decoded likelihood's parameters at posterior draws, as scVI's: arrays ``(n_cells, n_features)``.

        ``rna``: ``mean`` (the NB mean at the cell's depth), ``dispersions`` (theta) and, for ZINB, ``dropout`` (the
        zero-inflation probability). ``protein``: ``mean`` (the mixture's), ``background_mean``, ``foreground_mean``,
        ``dispersions`` and ``background_probability``. ``atac``: ``mean`` (the probability of an open peak). With
        ``n_samples > 1``: ``(n_samples, n_cells, n_features)``, or their average with ``give_mean``.
        """
        modality = self.resolve_modality(modality)

        def read(px, _):
            if modality == "rna":
                theta = px.theta.expand_as(px.mu)
                dropout = (torch.sigmoid(px.zi_logits),) if hasattr(px, "zi_logits") else ()
                return px.mu, theta, *dropout
            if modality == "protein":
                background = px.mixture_probs
                mean = background * px.mu1 + (1 - background) * px.mu2
                return mean, px.mu1, px.mu2, px.theta1.expand_as(px.mu1), background
            return (_accessibility(px).probs,)

        names = {
            "rna": ("mean", "dispersions", "dropout"),
            "protein": ("mean", "background_mean", "foreground_mean", "dispersions", "background_probability"),
        }.get(modality, ("mean",))
        values = self._stream(adata, indices, modality, read, n_samples=n_samples, use_mean=False,
                              batch_size=batch_size)  # fmt: skip
        squeeze = (lambda v: v.mean(0)) if give_mean else (lambda v: v[0] if n_samples == 1 else v)
        return {name: squeeze(value) for name, value in zip(names, values, strict=False)}

    @torch.inference_mode()
    def posterior_predictive_sample(
        self, adata=None, indices=None, n_samples: int = 1, gene_list=None, batch_size: int | None = None,
        *, modality: str = "rna",
    ):  # fmt: skip
        """Counts drawn from the posterior predictive, as scvi-tools 1.4's: a ``sparse.GCXS`` array.

        Shape ``(n_cells, n_features)`` with ``n_samples == 1``, else ``(n_cells, n_features, n_samples)``; a new
        ``z`` per draw. ``gene_list``: features of ``modality`` to keep. Cells that did not measure ``modality`` get
        it drawn at the median depth of the measured cells.
        """
        import sparse as pydata_sparse

        modality = self.resolve_modality(modality)
        _, _, columns = self._features(adata, indices, modality, gene_list, "gene_list")
        (values,) = self._stream(adata, indices, modality, lambda px, _: (px.sample()[:, columns],),
                                 n_samples=n_samples, use_mean=False, batch_size=batch_size)  # fmt: skip
        values = np.moveaxis(values, 0, -1)
        return pydata_sparse.GCXS.from_numpy(values[..., 0] if n_samples == 1 else values)

    @torch.inference_mode()
    def get_feature_correlation_matrix(
        self, adata=None, indices=None, n_samples: int = 10, batch_size: int | None = None,
        rna_size_factor: float = 1000, correlation_type: str = "spearman", *, modalities: Sequence[str] = ("rna",),
    ) -> pd.DataFrame:  # fmt: skip
        """Correlation of denoised values between the features of ``modalities`` (as scVI's and TOTALVI's).

        Over the cells and ``n_samples`` posterior draws each: ``rna`` the Gamma rate of the NB at depth
        ``rna_size_factor`` (scVI's), ``protein`` the Gamma rate of the component drawn from the mixture, ``atac``
        the probability of an open peak. Columns are the features of each modality in turn.
        """
        if correlation_type not in ("spearman", "pearson"):
            raise ValueError(f"correlation_type={correlation_type!r}; pass 'spearman' or 'pearson'.")
        modalities = [self.resolve_modality(m, argument="modalities") for m in modalities]
        aligned = self._aligned(adata)

        def read(modality):
            def denoised(px, _):
                if modality == "rna":
                    return (_gamma_rate(px.mu, px.theta),)
                if modality == "protein":
                    background = torch.bernoulli(px.mixture_probs) > 0
                    return (_gamma_rate(torch.where(background, px.mu1, px.mu2), px.theta1),)
                return (_accessibility(px).probs,)

            return denoised

        torch.manual_seed(0)
        blocks, names = [], []
        for modality in modalities:
            library = rna_size_factor if modality == "rna" else None
            (values,) = self._stream(adata, indices, modality, read(modality), n_samples=n_samples, use_mean=False,
                                     library=library, batch_size=batch_size)  # fmt: skip
            blocks.append(values.reshape(-1, values.shape[-1]))
            var_names = aligned.mod[self.modalities[modality]].var_names
            names.extend(var_names if len(modalities) == 1 else [f"{modality}:{name}" for name in var_names])
        data = np.concatenate(blocks, axis=1)
        data = data[~np.isnan(data).any(1)]
        if correlation_type == "pearson":
            matrix = np.corrcoef(data, rowvar=False)
        else:
            matrix = stats.spearmanr(data).statistic
        return pd.DataFrame(np.atleast_2d(matrix), index=names, columns=names)

    @torch.inference_mode()
    def get_marginal_ll(
        self, adata=None, indices=None, n_mc_samples: int = 100, batch_size: int | None = None,
        return_mean: bool = True, **kwargs,
    ) -> float | np.ndarray:  # fmt: skip
        """Importance-weighted estimate of ``log p(x)`` of each cell's measured modalities (Burda et al., 2016).

        ``log mean_k exp(log p(x | z_k) + log p(z_k) - log q(z_k | x))`` over ``n_mc_samples`` draws of the joint
        posterior; the ATAC cell factor and the RNA depth are the cell's own, as in training. Higher is better; at
        least the ELBO of :meth:`get_elbo` on average. The mean over cells with ``return_mean``, else per cell.
        """
        self._check_if_trained(warn=False)
        if kwargs:
            raise TypeError(f"get_marginal_ll() got unexpected keyword arguments {sorted(kwargs)}.")
        estimates = []
        for tensors in self._minibatches(adata, indices, batch_size):
            posterior = self.module.posterior(tensors)
            qz = posterior.qz
            z = qz.sample((n_mc_samples,))
            log_weight = Normal(0.0, 1.0).log_prob(z).sum(-1) - qz.log_prob(z).sum(-1)
            log_weight = log_weight + self.module.log_likelihood(z, tensors, posterior)
            estimates.append(torch.logsumexp(log_weight, 0) - math.log(n_mc_samples))
        values = torch.cat(estimates).cpu().numpy()
        return float(values.mean()) if return_mean else values
