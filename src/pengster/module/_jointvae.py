"""JointVAEModule: per-modality encoders, masked product of experts, decoders and the interdependent ELBO."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder
from torch import nn
from torch.distributions import Normal

from pengster._constants import REGISTRY_KEYS
from pengster.nn import LogitScale, ProjectionHead, encoder_moments, product_of_experts
from pengster.nn._precision import autocast_off

from . import _atac, _pairs, _protein, _rna  # noqa: F401 - each head file adds its head to HEADS
from ._bridge import bridge_posterior, shared_genes
from ._constants import MODULE_KEYS
from ._head import HEADS, HeadInput
from ._loss import interdependent_elbo
from ._readout import ReadoutMixin

_NORM = {"use_batch_norm": False, "use_layer_norm": True}
# Layer norm, not batch norm: a mosaic minibatch may hold a single cell of a modality, and the statistics of
# padded rows (cells without the modality) must never enter the normalisation.


_RENAMED_0_2 = (
    ("decoders", "heads"),
    ("cell_factor_encoder", "heads.atac.cell_factor_encoder"),
    ("cell_factor_predictor", "heads.atac.cell_factor_predictor"),
    ("atac_cell_factor_mean", "heads.atac.cell_factor_mean"),
)
"""Weights of pengster 0.2 that moved into the heads: old name prefix -> new one."""


def _long_or_none(values: torch.Tensor | None) -> torch.Tensor | None:
    return None if values is None else values.long()


class JointVAEModule(ReadoutMixin, BaseModuleClass):
    """The torch module behind :class:`pengster.model.JointVAE`.

    Each modality is a head (``module/_rna.py``, ``_atac.py``, ``_protein.py``; see ``module/_head.py``), built from
    ``pengster.module._head.HEADS``; the module itself names no modality. ``inference``, ``generative`` and
    ``loss`` change none of the module's buffers (torch's batch-norm layers in the decoders keep their statistics as in
    any torch model); what training learns besides the weights (the heads' running statistics, e.g. ATAC's mean cell
    factor) is updated by :meth:`update_running_statistics`, which the training plan calls once per training step.
    Read-outs go through ``posterior`` and ``readout``.

    Parameters
    ----------
    n_features
        Modality (``rna``, ``atac``, ``protein``) -> number of features.
    feature_masks
        Modality -> float tensor of shape ``(n_panels, n_features)``: 1 where the panel (dataset) measured the
        feature.
    n_batch
        Number of batch categories.
    n_cats_per_cov
        Categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates, concatenated to the decoders' input (as in MULTIVI).
    batch_has_modality
        Float tensor ``(n_batch, n_modalities)``: 1 where the batch has training cells measuring the modality.
    n_latent, n_hidden, n_layers, dropout_rate
        Sizes of the networks.
    encode_covariates
        Give the batch and covariates to the encoders too.
    cross_weight
        Weight of each single-modality posterior's ELBO (the interdependent terms).
    contrastive_weight
        Weight of the InfoNCE alignment between modalities of the same cell; 0 switches it off.
    temperature, learn_temperature
        Initial InfoNCE temperature and whether it is learned.
    mixing_weight
        Weight of the MMD between the datasets (panels) of a minibatch in the joint latent; 0 switches it off. It has
        no effect with a single dataset.
    bridge_weight
        Weight of the KL term that pulls each cell's joint posterior towards its RNA bridge posterior (from an
        encoder of the genes every panel measured, blind to the dataset); 0 builds no bridge. Needs ``rna``.
    cross_terms
        ``all``: decode every reconstruction term; ``sampled`` / ``single``: in training, importance-sampled terms
        (an unbiased estimate of the same loss with fewer decodes; see ``module/_pairs.py``).
    **head_options
        Options of the heads, each named as its head's ``OPTIONS`` declare: ``rna_likelihood`` (``nb``/``zinb``),
        ``atac_likelihood`` (``bernoulli``/``poisson``), ``predict_cell_factor`` (predict the ATAC cell factor of
        cells without ATAC from the depth of their other modalities; False decodes them with the mean factor).
    """

    def __init__(
        self,
        n_features: Mapping[str, int],
        feature_masks: Mapping[str, torch.Tensor],
        *,
        n_batch: int = 1,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous_cov: int = 0,
        batch_has_modality: torch.Tensor | None = None,
        n_latent: int = 20,
        n_hidden: int = 256,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        encode_covariates: bool = False,
        cross_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        temperature: float = 0.1,
        learn_temperature: bool = True,
        mixing_weight: float = 0.0,
        bridge_weight: float = 0.0,
        cross_terms: Literal["all", "sampled", "single"] = "all",
        **head_options,
    ):
        super().__init__()
        if cross_terms not in _pairs.CROSS_TERMS:
            raise ValueError(f"cross_terms={cross_terms!r}: use one of {_pairs.CROSS_TERMS}.")
        self.cross_terms = cross_terms
        self.modalities = tuple(n_features)
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.cross_weight = cross_weight
        self.contrastive_weight = contrastive_weight
        self.mixing_weight = mixing_weight
        self.bridge_weight = bridge_weight
        self.encode_covariates = encode_covariates
        n_panels = next(iter(feature_masks.values())).shape[0]
        self.n_panels = n_panels
        for modality, mask in feature_masks.items():
            self.register_buffer(f"feature_mask_{modality}", mask.float())
        if batch_has_modality is None:
            batch_has_modality = torch.ones(n_batch, len(self.modalities))
        self.register_buffer("batch_has_modality", batch_has_modality.float())
        # set by reference mapping: the query keeps the reference's running statistics
        self.freeze_running_stats = False

        decoder_cats = [n_batch, *n_cats_per_cov]
        self.n_continuous_cov = n_continuous_cov
        n_decoder_input = n_latent + n_continuous_cov
        encoder_cats = [n_panels] + (decoder_cats if encode_covariates else [])
        self.encoders = nn.ModuleDict(
            {
                modality: Encoder(
                    n_features[modality],
                    n_latent,
                    n_cat_list=encoder_cats,
                    n_layers=n_layers,
                    n_hidden=n_hidden,
                    dropout_rate=dropout_rate,
                    return_dist=True,
                    **_NORM,
                )
                for modality in self.modalities
            }
        )
        if bridge_weight > 0:
            if "rna" not in n_features:
                raise ValueError("bridge_weight > 0 needs the 'rna' modality; set bridge_weight=0.")
            self.register_buffer("bridge_mask", shared_genes(feature_masks["rna"]))
            self.bridge_encoder = Encoder(
                n_features["rna"],
                n_latent,
                n_layers=n_layers,
                n_hidden=n_hidden,
                dropout_rate=dropout_rate,
                return_dist=True,
                **_NORM,
            )
        unknown = set(n_features) - set(HEADS)
        if unknown:
            raise ValueError(f"no head for the modalities {sorted(unknown)}; heads exist for {sorted(HEADS)}.")
        known = {name for head in HEADS.values() for name in head.OPTIONS}
        if set(head_options) - known:
            raise TypeError(f"JointVAEModule got unexpected arguments {sorted(set(head_options) - known)}.")
        self.heads = nn.ModuleDict(
            {
                modality: HEADS[modality](
                    n_features[modality],
                    n_decoder_input,
                    decoder_cats,
                    n_batch=n_batch,
                    n_hidden=n_hidden,
                    n_layers=n_layers,
                    encoder_cats=encoder_cats,
                    modalities=self.modalities,
                    **{
                        own: head_options[name] for name, own in HEADS[modality].OPTIONS.items() if name in head_options
                    },
                )
                for modality in self.modalities
            }
        )
        self.projection_heads = nn.ModuleDict({modality: ProjectionHead(n_latent) for modality in self.modalities})
        self.logit_scale = LogitScale(temperature, learnable=learn_temperature)

    # ----------------------------------------------------------------------------------------- helpers
    def is_encoder_part(self, name: str) -> bool:
        """Whether the submodule ``name`` (as in ``named_modules``) encodes: all but the heads' decoding parts."""
        if not name.startswith("heads."):
            return True
        _, modality, *rest = name.split(".")
        return bool(rest) and rest[0] in self.heads[modality].ENCODER_PARTS

    @staticmethod
    def upgrade_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights of a model saved by pengster 0.2 under the names of the head modules (others unchanged)."""
        upgraded = {}
        for key, value in state.items():
            for old, new in _RENAMED_0_2:
                if key == old or key.startswith(old + "."):
                    key = new + key[len(old) :]
                    break
            upgraded[key] = value
        return upgraded

    def feature_mask(self, modality: str, panel: torch.Tensor) -> torch.Tensor:
        """Per-cell feature mask of shape ``(n_cells, n_features)`` (a broadcast view with a single panel)."""
        table = getattr(self, f"feature_mask_{modality}")
        if table.shape[0] == 1:
            return table.expand(panel.shape[0], -1)
        return table[panel.view(-1).long()]

    def _categoricals(self, batch_index: torch.Tensor, cat_covs: torch.Tensor | None) -> list[torch.Tensor]:
        covs = [] if cat_covs is None else list(torch.split(cat_covs, 1, dim=1))
        return [batch_index, *covs]

    def _encoder_categoricals(self, panel, batch_index, cat_covs) -> list[torch.Tensor]:
        return [panel] + (self._categoricals(batch_index, cat_covs) if self.encode_covariates else [])

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": {m: tensors[REGISTRY_KEYS.counts(m)] for m in self.modalities},
            "has": {m: tensors[REGISTRY_KEYS.has(m)].view(-1) for m in self.modalities},
            "batch_index": tensors[REGISTRY_KEYS.BATCH].long(),
            "cat_covs": _long_or_none(tensors.get(REGISTRY_KEYS.CAT_COVS)),
            "panel": tensors[REGISTRY_KEYS.PANEL].long(),
        }

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs[MODULE_KEYS.Z],
            "batch_index": tensors[REGISTRY_KEYS.BATCH].long(),
            "cat_covs": _long_or_none(tensors.get(REGISTRY_KEYS.CAT_COVS)),
            "panel": tensors[REGISTRY_KEYS.PANEL].long(),
            "library": inference_outputs[MODULE_KEYS.LIBRARY],
            "state": inference_outputs[MODULE_KEYS.STATE],
            "pairs": self.reconstruction_pairs(inference_outputs[MODULE_KEYS.HAS]),
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS),
            "size_factor": tensors.get(REGISTRY_KEYS.SIZE_FACTOR),
            # the joint terms lead the pairs, one per cell with the modality, except when they are drawn too
            "joint_pairs": None
            if self.cross_terms == "single"
            else {m: rows.numel() for m, rows in inference_outputs[MODULE_KEYS.ROWS].items()},
        }

    def reconstruction_pairs(
        self, has: Mapping[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Modality -> ``(posterior, cell, weight)`` of the reconstruction terms of the interdependent ELBO.

        See ``pengster.module._pairs.pairs``: every term, or in training with ``cross_terms`` ``sampled`` or
        ``single``, importance-weighted draws of them.
        """
        bridge = self.bridge_weight > 0
        weights = _pairs.posterior_weights(has, self.modalities, self.cross_weight, bridge)
        sampled = self.cross_terms != "all" and self.training
        keep_joint = self.cross_terms == "sampled"
        return _pairs.pairs(has, self.modalities, weights, bridge=bridge, sampled=sampled, keep_joint=keep_joint)

    # ----------------------------------------------------------------------------------------- inference
    @auto_move_data
    def experts(
        self,
        x: Mapping[str, torch.Tensor],
        has: Mapping[str, torch.Tensor],
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None,
        panel: torch.Tensor,
        rows: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each modality's expert ``(mean, variance)`` of shape ``(n_cells, n_latent)``; rows without it are 0/1."""
        categoricals = self._encoder_categoricals(panel, batch_index, cat_covs)
        rows = rows or _pairs.measured_rows(has)
        n_cells = panel.shape[0]
        experts = {}
        for modality in self.modalities:
            mean = x[modality].new_zeros(n_cells, self.n_latent, dtype=torch.float32)
            variance = torch.ones_like(mean)
            cells = rows[modality]
            if cells.numel() > 0:
                mask = self.feature_mask(modality, panel[cells])
                encoder_input = self.heads[modality].encoder_input(x[modality][cells].float(), mask)
                own_mean, own_variance = encoder_moments(
                    self.encoders[modality], encoder_input, *[c[cells] for c in categoricals]
                )
                mean = mean.index_copy(0, cells, own_mean)
                variance = variance.index_copy(0, cells, own_variance)
            experts[modality] = (mean, variance)
        return experts

    def fuse(
        self,
        experts: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        has: Mapping[str, torch.Tensor],
        use: Sequence[str] | None = None,
    ) -> Normal:
        """Product of the experts in ``use`` (default: all) that each cell has, and the prior."""
        use = self.modalities if use is None else use
        return product_of_experts(
            [experts[m][0] for m in use], [experts[m][1] for m in use], [has[m].float() for m in use]
        )

    @auto_move_data
    def inference(self, x, has, batch_index, cat_covs, panel) -> dict:
        """Encode, fuse, and sample one ``z`` per posterior: the joint one, then each modality's own."""
        rows = _pairs.measured_rows(has)
        experts = self.experts(x, has, batch_index, cat_covs, panel, rows)
        posteriors = [self.fuse(experts, has)] + [self.fuse(experts, has, [m]) for m in self.modalities]
        if self.bridge_weight > 0:
            posteriors.append(bridge_posterior(self, x["rna"], has["rna"], panel, rows["rna"]))
        qz = Normal(
            torch.stack([q.loc for q in posteriors]), torch.stack([q.scale for q in posteriors]), validate_args=False
        )
        return {
            MODULE_KEYS.QZ: qz,
            MODULE_KEYS.Z: qz.rsample(),
            MODULE_KEYS.EXPERTS: experts,
            MODULE_KEYS.HAS: has,
            MODULE_KEYS.ROWS: rows,
            MODULE_KEYS.LIBRARY: self.libraries(x, panel),
            MODULE_KEYS.STATE: self.cell_states(x, panel, batch_index, cat_covs, rows),
        }

    def libraries(self, x: Mapping[str, torch.Tensor], panel: torch.Tensor) -> dict:
        """Modality -> total counts over the measured features, shape ``(n_cells, 1)``, at least 1."""
        return {
            m: (x[m].float() * self.feature_mask(m, panel)).sum(-1, keepdim=True).clamp_min(1.0)
            for m in self.modalities
        }

    def cell_states(self, x, panel, batch_index, cat_covs, rows) -> dict[str, torch.Tensor | None]:
        """Modality -> its head's per-cell state from its own counts (see ``Head.cell_state``)."""
        categoricals = self._encoder_categoricals(panel, batch_index, cat_covs)
        states = {}
        for modality, head in self.heads.items():
            cells = rows[modality]
            states[modality] = head.cell_state(
                x[modality][cells].float(),
                cells,
                self.feature_mask(modality, panel[cells]),
                [c[cells] for c in categoricals],
                panel.shape[0],
            )
        return states

    def update_running_statistics(self, inference_outputs: Mapping) -> None:
        """Fold a training minibatch into the heads' running statistics (e.g. ATAC's mean cell factor).

        The one place, besides the optimizer, where training changes the module: the training plan calls it after
        each training step's forward pass.
        """
        for head in self.heads.values():
            head.update_statistics(inference_outputs)

    # ----------------------------------------------------------------------------------------- generative
    @auto_move_data
    def generative(
        self, z, batch_index, cat_covs, panel, library, state, pairs, cont_covs=None, size_factor=None, joint_pairs=None
    ) -> dict:
        """Decode ``z`` of shape ``(n_posteriors, n_cells, n_latent)`` at each modality's (posterior, cell) pairs.

        See :meth:`reconstruction_pairs`; returns modality -> a list of ``pengster.module._pairs.Decoded`` (the
        distribution of a span of the pairs), None where it has no pairs. ``joint_pairs``: modality -> the number of
        leading joint terms among its pairs; in training, the pairs after them are decoded on the features of the
        head's ``cross_features`` (None: every pair on every feature). ``state``: modality -> the
        heads' per-cell states. ``size_factor`` ``(n_cells, 1)``, when given, is the RNA library size in place of the
        observed totals.
        """
        categoricals = self._categoricals(batch_index, cat_covs)
        if size_factor is not None and "rna" in library:
            library = {**library, "rna": size_factor.float().view(-1, 1)}
        outputs = {}
        for modality, (posterior, cell, _) in pairs.items():
            if cell.numel() == 0:
                outputs[modality] = None
                continue
            # in training a head may score its cross terms (the pairs after the joint ones) on a subset of features
            features = self.heads[modality].cross_features() if self.training and joint_pairs else None
            n_exact = cell.numel() if features is None else joint_pairs[modality]
            outputs[modality] = []
            for span, subset in ((slice(0, n_exact), None), (slice(n_exact, None), features)):
                rows = cell[span]
                if rows.numel() == 0:
                    continue
                mask = self.feature_mask(modality, panel[rows])
                inputs = HeadInput(
                    [c[rows] for c in categoricals],
                    mask if subset is None else mask[:, subset],
                    library[modality][rows],
                    None if state[modality] is None else state[modality][rows],
                    subset,
                )
                px = self.decode(
                    modality, z[posterior[span], rows], inputs, None if cont_covs is None else cont_covs[rows]
                )
                scale = 1.0 if subset is None else mask.shape[-1] / subset.numel()
                outputs[modality].append(_pairs.Decoded(px, span, subset, scale))
        return {MODULE_KEYS.PX: outputs, MODULE_KEYS.PAIRS: pairs}

    def decoder_input(self, z: torch.Tensor, cont_covs: torch.Tensor | None) -> torch.Tensor:
        """``z`` with the continuous covariates ``(n_cells, n_continuous_cov)`` appended (MULTIVI's decoder input)."""
        if self.n_continuous_cov == 0:
            return z
        if cont_covs is None:
            raise ValueError(
                f"this module decodes with {self.n_continuous_cov} continuous covariates (continuous_covariate_keys); "
                "pass their values as cont_covs."
            )
        # one row per cell; z may hold several posterior samples of each cell in front
        cont_covs = cont_covs.to(z.dtype).expand(*z.shape[:-1], cont_covs.shape[-1])
        return torch.cat([z, cont_covs], dim=-1)

    def decode(self, modality: str, z: torch.Tensor, inputs: HeadInput, cont_covs=None):
        """The distribution of ``modality`` at ``z`` ``(..., n_cells, n_latent)`` (its head's decoder)."""
        return self.heads[modality](self.decoder_input(z, cont_covs), inputs)

    # ----------------------------------------------------------------------------------------- loss
    @autocast_off()
    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight: float = 1.0) -> LossOutput:
        """Interdependent ELBO (joint + each measured modality's own posterior) plus contrastive alignment.

        See ``pengster/module/_loss.py``; under autocast, computed in float32.
        """
        return interdependent_elbo(self, tensors, inference_outputs, generative_outputs, kl_weight)


__all__ = ["JointVAEModule"]
