"""The module's read-out entrances: the posterior of chosen source modalities, and a head's read-out at given latents.

The model's getters loop over minibatches and call only these (as MULTIVI's go through ``inference`` and
``generative``); they never reach into encoders, fusion, feature masks or heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.distributions import Distribution, Normal

from pengster._constants import REGISTRY_KEYS

from ._head import HeadInput


@dataclass
class Posterior:
    """The posterior of a minibatch's cells given some of their modalities (see ``ReadoutMixin.posterior``)."""

    qz: Normal
    """Normal of shape ``(n_cells, n_latent)``: the product of the source experts each cell has, and the prior."""
    available: torch.Tensor
    """``(n_cells,)`` bool: the cell measured at least one source (else ``qz`` is the prior)."""
    has: dict[str, torch.Tensor]
    """Modality -> ``(n_cells,)`` 0/1: the cell measured it (every modality, sources or not)."""
    libraries: dict[str, torch.Tensor]
    """Modality -> ``(n_cells, 1)`` total counts over the measured features (at least 1)."""
    states: dict[str, torch.Tensor | None]
    """The state each modality's head decodes with, e.g. ATAC's cell factor (the cell's own where ATAC is a source
    it measured, else predicted from the sources)."""


class ReadoutMixin:
    """Read-out entrances of :class:`~pengster.module.JointVAEModule`."""

    def _on_device(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in tensors.items() if isinstance(value, torch.Tensor)}

    def posterior(
        self, tensors: Mapping[str, torch.Tensor], sources: Sequence[str] | None = None, *, states: bool = True
    ) -> Posterior:
        """The posterior of each cell of a minibatch given its measured ``sources`` (default: all modalities).

        Only the source modalities are encoded; a cell's other modalities are never read, except their library
        sizes and the flags of what it measured. ``states=False`` leaves the heads' states out (empty), for a latent
        read-out that decodes nothing.
        """
        tensors = self._on_device(tensors)
        inputs = self._get_inference_input(tensors)
        sources = list(self.modalities if sources is None else sources)
        has = inputs["has"]
        source_has = {m: h if m in sources else torch.zeros_like(h) for m, h in has.items()}
        experts = self.experts(**{**inputs, "has": source_has})
        qz = self.fuse(experts, source_has, sources)
        available = sum(source_has[m] for m in sources) > 0
        libraries = self.libraries(inputs["x"], inputs["panel"])
        if not states:
            return Posterior(qz=qz, available=available, has=has, libraries=libraries, states={})
        rows = {m: (source_has[m] > 0).nonzero().view(-1) for m in self.modalities}
        own = self.cell_states(inputs["x"], inputs["panel"], inputs["batch_index"], inputs["cat_covs"], rows)
        n_cells = inputs["panel"].shape[0]
        decoding = {}
        for modality, head in self.heads.items():
            others = [m for m in sources if m != modality]
            state = head.source_state(libraries, has, others, n_cells)
            if state is not None and own[modality] is not None and modality in sources:
                state = torch.where(source_has[modality].view(-1, 1) > 0, own[modality], state)
            decoding[modality] = state
        return Posterior(qz=qz, available=available, has=has, libraries=libraries, states=decoding)

    def _head_input(self, modality, tensors, batch_index, library, state, every_feature=False) -> HeadInput:
        cat_covs = tensors.get(REGISTRY_KEYS.CAT_COVS)
        categoricals = self._categoricals(batch_index, None if cat_covs is None else cat_covs.long())
        mask = self.feature_mask(modality, tensors[REGISTRY_KEYS.PANEL].long())
        if every_feature:
            mask = torch.ones_like(mask)
        return HeadInput(categoricals, mask, library, state)

    def distribution(
        self,
        modality: str,
        z: torch.Tensor,
        tensors: Mapping[str, torch.Tensor],
        *,
        library: torch.Tensor | float = 1.0,
        state: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
    ) -> Distribution:
        """The decoded distribution of ``modality`` at ``z`` ``(..., n_cells, n_latent)`` for a minibatch.

        Decoded under each cell's own batch (or ``batch_index``), at depth ``library``, with the head ``state``.
        """
        tensors = self._on_device(tensors)
        batch_index = tensors[REGISTRY_KEYS.BATCH].long() if batch_index is None else batch_index
        inputs = self._head_input(modality, tensors, batch_index, library, state)
        return self.decode(modality, z, inputs, tensors.get(REGISTRY_KEYS.CONT_COVS))

    def readout(
        self,
        modality: str,
        z: torch.Tensor,
        tensors: Mapping[str, torch.Tensor],
        *,
        scale: Literal["reported", "normalized"] = "reported",
        state: torch.Tensor | None = None,
        batches: Sequence[int] | None = None,
        variance: bool = False,
        every_feature: bool = False,
        **options,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A head's read-out of ``modality`` at ``z`` ``(..., n_cells, n_latent)`` for a minibatch.

        Parameters
        ----------
        scale
            ``reported``: the head's reported scale (log1p, probability, CLR) and, with ``variance``, the variance of
            one measurement there (``Head.reported``); ``normalized``: its linear scale (``Head.normalized``).
        state
            The head's per-cell state (from ``posterior``); None: the head's default.
        batches
            Batch codes to decode under and average; default: each cell's own batch, and for a cell whose batch never
            measured ``modality``, the average over the batches that did.
        every_feature
            Decode as if the cell's panel had measured every feature: RNA proportions are then shares of the whole
            gene set, comparable between cells of different gene panels (default: shares of the genes the cell's
            panel measured, 0 at the others).
        options
            Passed to the head's read-out (e.g. ``denoised``, ``target_sum``, ``depth``, ``library_size``).

        Returns
        -------
        ``(value, variance)``, each ``(..., n_cells, n_features)`` (variance None unless asked for).
        """
        tensors = self._on_device(tensors)
        head = self.heads[modality]
        library = options.pop("library", 1.0)

        def under(codes: torch.Tensor):
            inputs = self._head_input(modality, tensors, codes, library, state, every_feature)
            px = self.decode(modality, z, inputs, tensors.get(REGISTRY_KEYS.CONT_COVS))
            if scale == "normalized":
                return head.normalized(px, inputs, **options), None
            return head.reported(px, inputs, variance=variance, **options)

        def averaged(codes: Sequence[int]):
            results = [under(torch.full_like(batch_index, code)) for code in codes]
            value = sum(r[0] for r in results) / len(results)
            return value, None if results[0][1] is None else sum(r[1] for r in results) / len(results)

        batch_index = tensors[REGISTRY_KEYS.BATCH].long()
        if batches is not None:
            return averaged(batches)
        seen = self.batch_has_modality[:, list(self.modalities).index(modality)]
        own_ok = seen[batch_index.view(-1)] > 0
        value, value_variance = under(batch_index)
        if not own_ok.all():
            stand_in, stand_in_variance = averaged(torch.nonzero(seen).view(-1).tolist())
            keep = own_ok.view(-1, 1)
            value = torch.where(keep, value, stand_in)
            if value_variance is not None:
                value_variance = torch.where(keep, value_variance, stand_in_variance)
        return value, value_variance

    def observed(self, modality: str, tensors: Mapping[str, torch.Tensor], **scale_options) -> torch.Tensor:
        """The minibatch's measured ``modality`` on its reported scale; features its panel did not measure are 0.

        ``scale_options``: the head's ``SCALE_OPTIONS`` (RNA: ``target_sum``).
        """
        tensors = self._on_device(tensors)
        mask = self.feature_mask(modality, tensors[REGISTRY_KEYS.PANEL].long())
        return self.heads[modality].observed(tensors[REGISTRY_KEYS.counts(modality)].float(), mask, **scale_options)

    def library(self, modality: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Total counts of ``modality`` over the measured features, ``(n_cells,)`` (0 where not measured)."""
        tensors = self._on_device(tensors)
        mask = self.feature_mask(modality, tensors[REGISTRY_KEYS.PANEL].long())
        counts = tensors[REGISTRY_KEYS.counts(modality)].float()
        return (counts * mask).sum(-1) * tensors[REGISTRY_KEYS.has(modality)].view(-1).float()

    def panel_features(self, modality: str) -> torch.Tensor:
        """``(n_panels, n_features)``: 1 where the panel (dataset) measured the feature of ``modality``."""
        return getattr(self, f"feature_mask_{modality}")

    def log_likelihood(
        self, z: torch.Tensor, tensors: Mapping[str, torch.Tensor], posterior: Posterior
    ) -> torch.Tensor:
        """``log p(x | z)`` of each cell's measured modalities at ``z`` ``(..., n_cells, n_latent)``, as in training.

        Each modality is decoded at the cell's own depth (the RNA size factor where the model has one) and its own
        head state (from ``posterior``, e.g. the encoded ATAC cell factor); features its panel did not measure and
        modalities it did not measure are left out. Shape ``z.shape[:-1]``.
        """
        tensors = self._on_device(tensors)
        panel = tensors[REGISTRY_KEYS.PANEL].long()
        size_factor = tensors.get(REGISTRY_KEYS.SIZE_FACTOR)
        total = z.new_zeros(z.shape[:-1])
        for modality, head in self.heads.items():
            depth = posterior.libraries[modality]
            if modality == "rna" and size_factor is not None:
                depth = size_factor.float().view(-1, 1)
            px = self.distribution(modality, z, tensors, library=depth, state=posterior.states[modality])
            x = head.scored(tensors[REGISTRY_KEYS.counts(modality)])
            mask = self.feature_mask(modality, panel) * posterior.has[modality].view(-1, 1).float()
            total = total + (px.log_prob(x) * mask).sum(-1)
        return total
