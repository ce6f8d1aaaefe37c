"""JointVAEModule: per-modality encoders, masked product of experts, decoders and the interdependent ELBO."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder
from torch import nn
from torch.distributions import Normal, kl_divergence

from pengster._constants import REGISTRY_KEYS
from pengster.nn import (
    ATACDecoder,
    CellFactorEncoder,
    CellFactorPredictor,
    LogitScale,
    ProjectionHead,
    ProteinDecoder,
    RNADecoder,
    product_of_experts,
    reconstruction_nll,
)
from pengster.nn._fused import _all_ones
from pengster.nn._pair_nll import pair_nll
from pengster.nn._precision import autocast_off

from . import _pairs, _sparse_inputs
from ._alignment import contrastive_loss, mixing_loss
from ._bridge import alignment_kl, bridge_posterior, shared_genes
from ._inputs import ENCODER_INPUTS, RNA_TARGET_SUM, clr
from ._rows import MeasuredRows, flat_view

_NORM = {"use_batch_norm": False, "use_layer_norm": True}
# Layer norm, not batch norm: a mosaic minibatch may hold a single cell of a modality, and the statistics of
# padded rows (cells without the modality) must never enter the normalisation.


def _long_or_none(values: torch.Tensor | None) -> torch.Tensor | None:
    return None if values is None else values.long()


class JointVAEModule(BaseModuleClass):
    """The torch module behind :class:`pengster.model.JointVAE`.

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
    rna_likelihood, atac_likelihood
        ``nb``/``zinb`` and ``bernoulli``/``poisson``.
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
    protein_background_init
        Initial log background rate per protein.
    predict_cell_factor
        Predict the ATAC cell factor of cells without ATAC from the depth of their other modalities (see
        :class:`~pengster.nn.CellFactorPredictor`); False decodes them with the mean factor.
    cross_terms
        ``all``: decode every reconstruction term; ``sampled`` / ``single``: in training, importance-sampled terms
        (an unbiased estimate of the same loss with fewer decodes; see ``module/_pairs.py``).
    """

    use_sparse: bool | None = None
    """RNA and ATAC encoders read the nonzero counts only, and the loss scores the data-only terms once per cell
    (``pengster/nn/_sparse.py``, ``_pair_nll.py``); same values as the dense path. None: on CPU
    only (untimed on GPUs, where dense products are cheap); ``train(fast=False)`` sets False while it trains."""

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
        rna_likelihood: Literal["nb", "zinb"] = "nb",
        atac_likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        cross_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        temperature: float = 0.1,
        learn_temperature: bool = True,
        mixing_weight: float = 0.0,
        bridge_weight: float = 0.0,
        protein_background_init: torch.Tensor | None = None,
        predict_cell_factor: bool = True,
        cross_terms: Literal["all", "sampled", "single"] = "all",
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
        self.register_buffer("atac_cell_factor_mean", torch.tensor(0.5))
        self.freeze_running_stats = False  # set by reference mapping: keep the reference's running statistics

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
        decoders = {}
        if "rna" in n_features:
            decoders["rna"] = RNADecoder(
                n_decoder_input, n_features["rna"], decoder_cats, n_hidden=n_hidden, likelihood=rna_likelihood
            )
        if "atac" in n_features:
            decoders["atac"] = ATACDecoder(
                n_decoder_input, n_features["atac"], decoder_cats, n_hidden=n_hidden, likelihood=atac_likelihood
            )
            self.cell_factor_encoder = CellFactorEncoder(n_features["atac"], encoder_cats)
        others = tuple(m for m in self.modalities if m != "atac")
        self.depth_sources = others if predict_cell_factor and "atac" in n_features else ()
        if self.depth_sources:
            self.cell_factor_predictor = CellFactorPredictor(len(self.depth_sources))
        if "protein" in n_features:
            decoders["protein"] = ProteinDecoder(
                n_decoder_input,
                n_features["protein"],
                n_batch,
                decoder_cats,
                n_hidden=n_hidden,
                background_init=protein_background_init,
            )
        self.decoders = nn.ModuleDict(decoders)
        self.projection_heads = nn.ModuleDict({modality: ProjectionHead(n_latent) for modality in self.modalities})
        self.logit_scale = LogitScale(temperature, learnable=learn_temperature)
        _sparse_inputs.column_major_first_layers(self)

    # ----------------------------------------------------------------------------------------- helpers
    def feature_mask(self, modality: str, panel: torch.Tensor) -> torch.Tensor:
        """Per-cell feature mask of shape ``(n_cells, n_features)`` (a broadcast view when all were measured)."""
        table = getattr(self, f"feature_mask_{modality}")
        if _all_ones(table):
            return table[:1].expand(panel.shape[0], -1)
        return table[panel.view(-1).long()]

    def _categoricals(self, batch_index: torch.Tensor, cat_covs: torch.Tensor | None) -> list[torch.Tensor]:
        covs = [] if cat_covs is None else list(torch.split(cat_covs, 1, dim=1))
        return [batch_index, *covs]

    def _encoder_categoricals(self, panel, batch_index, cat_covs) -> list[torch.Tensor]:
        return [panel] + (self._categoricals(batch_index, cat_covs) if self.encode_covariates else [])

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": {m: tensors[REGISTRY_KEYS.counts(m)] for m in self.modalities},
            "has": {m: flat_view(tensors[REGISTRY_KEYS.has(m)]) for m in self.modalities},
            "batch_index": tensors[REGISTRY_KEYS.BATCH].long(),
            "cat_covs": _long_or_none(tensors.get(REGISTRY_KEYS.CAT_COVS)),
            "panel": tensors[REGISTRY_KEYS.PANEL].long(),
        }

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs["z"],
            "batch_index": tensors[REGISTRY_KEYS.BATCH].long(),
            "cat_covs": _long_or_none(tensors.get(REGISTRY_KEYS.CAT_COVS)),
            "panel": tensors[REGISTRY_KEYS.PANEL].long(),
            "library": inference_outputs["library"],
            "cell_factor": inference_outputs["cell_factor"],
            "pairs": self.reconstruction_pairs(inference_outputs["has"], inference_outputs.get("rows")),
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS),
            "size_factor": tensors.get(REGISTRY_KEYS.SIZE_FACTOR),
        }

    def reconstruction_pairs(
        self, has: Mapping[str, torch.Tensor], measured: MeasuredRows | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Modality -> ``(posterior, cell, weight)`` of the reconstruction terms of the interdependent ELBO.

        See ``pengster.module._pairs.pairs``: every term, or in training with ``cross_terms`` ``sampled`` or
        ``single``, importance-weighted draws of them. Chosen on the host (``measured``), copied to ``has``' device.
        """
        measured = measured or MeasuredRows(has)
        host = {m: measured.host[m].float() for m in self.modalities}
        bridge = self.bridge_weight > 0
        weights = _pairs.posterior_weights(host, self.modalities, self.cross_weight, bridge)
        sampled = self.cross_terms != "all" and self.training
        keep_joint = self.cross_terms == "sampled"
        terms = _pairs.pairs(host, self.modalities, weights, bridge=bridge, sampled=sampled, keep_joint=keep_joint)
        return {m: tuple(measured.to_device(t) for t in term) for m, term in terms.items()}

    # ----------------------------------------------------------------------------------------- inference
    @auto_move_data
    def experts(
        self,
        x: Mapping[str, torch.Tensor],
        has: Mapping[str, torch.Tensor],
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None,
        panel: torch.Tensor,
        sparse_counts: Mapping | None = None,
        measured: MeasuredRows | None = None,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each modality's expert ``(mean, variance)`` of shape ``(n_cells, n_latent)``; rows without it are 0/1."""
        categoricals = self._encoder_categoricals(panel, batch_index, cat_covs)
        measured = measured or MeasuredRows(has)
        n_cells = panel.shape[0]
        experts = {}
        for modality in self.modalities:
            mean = x[modality].new_zeros(n_cells, self.n_latent)
            variance = x[modality].new_ones(n_cells, self.n_latent)
            rows = measured.of(modality)
            if rows.numel() > 0 and self._sparse(modality, panel.device):
                qz, _ = _sparse_inputs.encode(self, modality, x, sparse_counts, panel, rows, categoricals)
            elif rows.numel() > 0:
                mask = self.feature_mask(modality, panel[rows])
                encoder_input = ENCODER_INPUTS[modality](x[modality][rows].float(), mask)
                qz, _ = self.encoders[modality](encoder_input, *[c[rows] for c in categoricals])
            if rows.numel() > 0:
                # float32 from here on: under bf16 autocast only the networks' layers run in bf16
                mean = mean.index_copy(0, rows, qz.loc.float())
                variance = variance.index_copy(0, rows, qz.scale.float().pow(2))
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
        sparse_counts = _sparse_inputs.sparse_counts(self, x)
        measured = MeasuredRows(has)
        experts = self.experts(x, has, batch_index, cat_covs, panel, sparse_counts, measured)
        posteriors = [self.fuse(experts, has)] + [self.fuse(experts, has, [m]) for m in self.modalities]
        if self.bridge_weight > 0:
            posteriors.append(bridge_posterior(self, x["rna"], has["rna"], panel, measured.of("rna")))
        qz = Normal(torch.stack([q.loc for q in posteriors]), torch.stack([q.scale for q in posteriors]))
        library = self.libraries(x, panel, sparse_counts)
        return {
            "qz": qz,
            "z": qz.rsample(),
            "experts": experts,
            "has": has,
            "library": library,
            "cell_factor": self._cell_factor(x, panel, batch_index, cat_covs, sparse_counts, measured),
            "sparse_counts": sparse_counts,
            "rows": measured,
        }

    def libraries(self, x: Mapping[str, torch.Tensor], panel: torch.Tensor, sparse_counts=None) -> dict:
        """Modality -> total counts over the measured features, shape ``(n_cells, 1)``, at least 1."""
        sparse_counts = sparse_counts or {}
        library = {}
        for modality in self.modalities:
            if modality in sparse_counts:
                table = getattr(self, f"feature_mask_{modality}")
                library[modality] = _sparse_inputs.library_size(sparse_counts[modality], table, panel)
                continue
            mask = self.feature_mask(modality, panel)
            library[modality] = (x[modality].float() * mask).sum(-1, keepdim=True).clamp_min(1.0)
        return library

    def _depth_inputs(self, library, has, use) -> tuple[torch.Tensor, torch.Tensor]:
        log_library = torch.cat([library[m].log() for m in self.depth_sources], -1)
        present = torch.stack([has[m].float() * float(m in use) for m in self.depth_sources], -1)
        return log_library, present

    @auto_move_data
    def source_cell_factor(self, x, has, panel, sources: Sequence[str]) -> torch.Tensor:
        """ATAC cell factor ``(n_cells, 1)`` for decoding ATAC from ``sources``: predicted from their depth.

        The mean factor when the module does not predict it (``predict_cell_factor=False``, or a model saved before
        the predictor existed).
        """
        if not self.depth_sources or not self.cell_factor_predictor.fitted:
            return self.atac_cell_factor_mean.expand(panel.shape[0], 1)
        inputs = self._depth_inputs(self.libraries(x, panel), has, sources)
        return torch.sigmoid(self.cell_factor_predictor(*inputs))

    def _fit_cell_factor_predictor(self, inference_outputs) -> None:
        if not self.depth_sources or not self.training or self.freeze_running_stats:
            return
        has = inference_outputs["has"]
        log_library, present = self._depth_inputs(inference_outputs["library"], has, self.depth_sources)
        # cells with ATAC and at least one depth source
        rows = (inference_outputs.get("rows") or MeasuredRows(has)).of("atac", any_of=self.depth_sources)
        if rows.numel() > 0:
            self.cell_factor_predictor.update(log_library[rows], present[rows], inference_outputs["cell_factor"][rows])

    def _sparse(self, modality: str, device: torch.device) -> bool:
        return _sparse_inputs.enabled(self, device) and modality in _sparse_inputs.SPARSE_INPUT_MODALITIES

    def _cell_factor(self, x, panel, batch_index, cat_covs, sparse_counts, measured) -> torch.Tensor | None:
        if "atac" not in self.modalities:
            return None
        n_cells = panel.shape[0]
        factor = self.atac_cell_factor_mean.expand(n_cells, 1).clone()
        rows = measured.of("atac")
        if rows.numel() > 0:
            categoricals = self._encoder_categoricals(panel, batch_index, cat_covs)
            if self._sparse("atac", panel.device):
                own = _sparse_inputs.cell_factor(self, x, sparse_counts, panel, rows, categoricals)
            else:
                mask = self.feature_mask("atac", panel[rows])
                own = self.cell_factor_encoder(
                    ENCODER_INPUTS["atac"](x["atac"][rows].float(), mask), *[c[rows] for c in categoricals]
                )
            own = own.float()
            if self.training and not self.freeze_running_stats:
                with torch.no_grad():
                    self.atac_cell_factor_mean.lerp_(own.mean(), 0.01)
            factor = factor.index_copy(0, rows, own)
        return factor

    # ----------------------------------------------------------------------------------------- generative
    @auto_move_data
    def generative(
        self, z, batch_index, cat_covs, panel, library, cell_factor, pairs, cont_covs=None, size_factor=None
    ) -> dict:
        """Decode ``z`` of shape ``(n_posteriors, n_cells, n_latent)`` at each modality's (posterior, cell) pairs.

        See :meth:`reconstruction_pairs`; returns modality -> ``(distribution, parts)`` over the pairs.
        ``size_factor`` ``(n_cells, 1)``, when given, is the RNA library size in place of the observed totals.
        """
        categoricals = self._categoricals(batch_index, cat_covs)
        if size_factor is not None and "rna" in library:
            library = {**library, "rna": size_factor.float().view(-1, 1)}
        outputs = {}
        for modality, (posterior, cell, _) in pairs.items():
            if cell.numel() == 0:
                outputs[modality] = None
                continue
            outputs[modality] = self.decode(
                modality,
                z[posterior, cell],
                [c[cell] for c in categoricals],
                self.feature_mask(modality, panel[cell]),
                library[modality][cell],
                cell_factor[cell] if cell_factor is not None else None,
                cont_covs=None if cont_covs is None else cont_covs[cell],
            )
        return {"px": outputs, "pairs": pairs}

    # ----------------------------------------------------------------------------------------- continuous covariates
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

    def decode(self, modality, z, categoricals, feature_mask, library=None, cell_factor=None, *, cont_covs=None):
        """Decode one modality; return ``(distribution, parts)``."""
        z = self.decoder_input(z, cont_covs)
        if modality == "rna":
            return self.decoders["rna"](z, library if library is not None else 1.0, feature_mask, *categoricals)
        if modality == "atac":
            lib = library if library is not None else 1.0
            return self.decoders["atac"](z, cell_factor, lib, feature_mask, *categoricals)
        return self.decoders["protein"](z, categoricals[0], *categoricals)

    def predicted_values(
        self, modality, z, categoricals, feature_mask, cell_factor=None, *, cont_covs=None
    ) -> torch.Tensor:
        """The decoded mean of ``modality`` in its reporting scale (log1p per 10k, probability, CLR)."""
        px, parts = self.decode(modality, z, categoricals, feature_mask, None, cell_factor, cont_covs=cont_covs)
        if modality == "rna":
            return torch.log1p(parts * RNA_TARGET_SUM)
        if modality == "atac":
            return parts
        return clr(px.mean, feature_mask)

    def denoised_values(
        self, modality, z, categoricals, feature_mask, cell_factor=None, *, cont_covs=None
    ) -> torch.Tensor:
        """Like :meth:`predicted_values`, but protein without its background (foreground only)."""
        if modality != "protein":
            return self.predicted_values(modality, z, categoricals, feature_mask, cell_factor, cont_covs=cont_covs)
        _, parts = self.decode(modality, z, categoricals, feature_mask, cont_covs=cont_covs)
        foreground = (1.0 - parts["mixing"]) * parts["foreground"]
        return clr(foreground, feature_mask)

    # ----------------------------------------------------------------------------------------- loss
    @autocast_off()
    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight: float = 1.0) -> LossOutput:
        """Interdependent ELBO (joint + each measured modality's own posterior) plus contrastive alignment."""
        has = inference_outputs["has"]
        panel = tensors[REGISTRY_KEYS.PANEL].long()
        qz = inference_outputs["qz"]
        n_cells = qz.loc.shape[1]
        weights = _pairs.posterior_weights(has, self.modalities, self.cross_weight, self.bridge_weight > 0)
        kl = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale))).sum(-1)
        per_cell = kl_weight * (weights * kl).sum(0)
        reconstruction = {}
        for modality in self.modalities:
            posterior, cell, weight = generative_outputs["pairs"][modality]
            joint_nll = qz.loc.new_zeros(n_cells)
            if cell.numel() > 0:
                px, _ = generative_outputs["px"][modality]
                counts, table = tensors[REGISTRY_KEYS.counts(modality)], getattr(self, f"feature_mask_{modality}")
                binarize = modality == "atac" and self.decoders["atac"].likelihood == "bernoulli"
                if _sparse_inputs.enabled(self, counts.device):
                    sparse = (inference_outputs.get("sparse_counts") or {}).get(modality)
                    nll = pair_nll(px, counts, cell, table, panel, binarize=binarize, sparse_counts=sparse)
                else:
                    nll = reconstruction_nll(px, counts[cell], table, panel[cell], binarize=binarize)
                weighted = weight * nll
                per_cell = per_cell.index_add(0, cell, weighted)
                # the joint term (weight 1): exact, or its importance-weighted estimate when the terms are sampled
                joint_nll = joint_nll.index_add(0, cell, torch.where(posterior == 0, weighted, 0.0))
            reconstruction[modality] = joint_nll

        bridge_kl = qz.loc.new_zeros(n_cells)
        if self.bridge_weight > 0:
            bridge_kl = alignment_kl(Normal(qz.loc[0], qz.scale[0]), Normal(qz.loc[-1], qz.scale[-1]), has["rna"])
            per_cell = per_cell + self.bridge_weight * kl_weight * bridge_kl

        contrastive = contrastive_loss(self, inference_outputs["experts"], has, inference_outputs.get("rows"))
        # a closed-form regression on observed depths and the encoded factors: no term of the loss
        self._fit_cell_factor_predictor(inference_outputs)
        mixing = mixing_loss(self, qz.loc[0], panel)
        loss = per_cell.mean() + self.contrastive_weight * contrastive + self.mixing_weight * mixing
        return LossOutput(
            loss=loss,
            reconstruction_loss={f"reconstruction_{m}": value for m, value in reconstruction.items()},
            kl_local={"kl_joint": kl[0]},
            extra_metrics={
                "contrastive": contrastive.detach(),
                "mixing_mmd": mixing.detach(),
                "bridge_kl": bridge_kl.detach().mean(),
                "inverse_temperature": self.logit_scale().detach(),
            },
        )


__all__ = ["JointVAEModule"]
