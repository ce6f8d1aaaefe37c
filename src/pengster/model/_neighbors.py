"""The reference read-out of :meth:`~pengster.model.JointVAE.predict`: what the nearest training cells measured.

A cell's prediction from the decoder alone is limited by the latent's few dimensions; the training cells around it
carry the rest (gene-gene structure the decoder smooths away). ``predict(reference_neighbors=k)`` averages the two.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from pengster._constants import REGISTRY_KEYS
from pengster.module._inputs import observed_values

MAX_REFERENCE_CELLS = 50_000
"""More training cells than this measured the target: a random subset of this many (seed 0) is the reference."""
SEARCH_CHUNK = 4096


class Reference:
    """The training cells that measured ``target``: their joint latent means and observed ``target`` values.

    Values are on the reporting scale of :meth:`~pengster.model.JointVAE.predict` (log1p per 10k, binary
    accessibility, CLR), zero at features the cell's panel did not measure.
    """

    def __init__(self, model, target: str, n_neighbors: int, *, batch_size: int | None = None):
        module = model.module
        latents, values, panels, names = [], [], [], []
        obs_names = model.adata.obs_names
        start = 0
        # the encoders draw a sample they are not asked for: keep the caller's random state (same posterior samples
        # with and without the reference read-out)
        cuda = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            for tensors in model._minibatches(None, None, batch_size):
                n_cells = tensors[REGISTRY_KEYS.PANEL].shape[0]
                inputs = module._get_inference_input(tensors)
                has = {m: h.to(model.device) for m, h in inputs["has"].items()}
                rows = (has[target] > 0).nonzero().view(-1)
                if rows.numel() > 0:
                    experts = module.experts(**inputs)
                    latents.append(module.fuse(experts, has).loc[rows].cpu().numpy())
                    panel = inputs["panel"].to(model.device).long().view(-1)[rows]
                    counts = tensors[REGISTRY_KEYS.counts(target)].to(model.device)[rows].float()
                    observed = observed_values(target, counts, module.feature_mask(target, panel))
                    values.append(sparse.csr_matrix(observed.cpu().numpy()))
                    panels.append(panel.cpu().numpy())
                    names.append(np.asarray(obs_names[start + rows.cpu().numpy()]))
                start += n_cells
        self.n_neighbors = n_neighbors
        self.size = sum(len(p) for p in panels)
        if self.size == 0:
            return
        keep = np.arange(self.size)
        if self.size > MAX_REFERENCE_CELLS:
            keep = np.sort(np.random.default_rng(0).choice(self.size, MAX_REFERENCE_CELLS, replace=False))
            self.size = MAX_REFERENCE_CELLS
        self.latent = torch.as_tensor(np.concatenate(latents)[keep], device=model.device)
        self.values = sparse.vstack(values).tocsr()[keep]
        self.names = np.concatenate(names)[keep]
        table = getattr(module, f"feature_mask_{target}").cpu().numpy()
        # panel one-hot @ mask table = each reference cell's measured features, without a cells x features matrix
        panel = np.concatenate(panels)[keep]
        self.panel_onehot = sparse.csr_matrix(
            (np.ones(len(panel)), (np.arange(len(panel)), panel)), shape=(len(panel), table.shape[0])
        )
        self.table = table

    def _nearest(self, z: torch.Tensor, k: int) -> np.ndarray:
        """Indices of the ``k`` reference cells nearest each row of ``z`` (exact search, in chunks of rows)."""
        found = []
        for chunk in torch.split(z.to(self.latent.dtype), SEARCH_CHUNK):
            distances = torch.cdist(chunk, self.latent)
            found.append(distances.topk(k, dim=1, largest=False).indices.cpu().numpy())
        return np.concatenate(found)

    def average(self, z: torch.Tensor, query_names: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean measured values of the neighbours of each row of ``z``, and where any neighbour measured the feature.

        ``z`` has shape ``(n_cells, n_latent)``; a query cell that is itself a reference cell is never its own
        neighbour. Returns two tensors of shape ``(n_cells, n_features)``: values, and 1.0 where covered.
        """
        k = min(self.n_neighbors, self.size - 1) if self.size > 1 else 1
        found = self._nearest(z, min(k + 1, self.size))
        own = self.names[found] == np.asarray(query_names)[:, None]
        # drop the cell itself where found, else the farthest: k neighbours per row
        keep = np.argsort(own, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(found, keep, axis=1)
        rows = np.repeat(np.arange(chosen.shape[0]), k)
        weights = sparse.csr_matrix(
            (np.full(rows.size, 1.0 / k), (rows, chosen.ravel())), shape=(len(chosen), self.size)
        )
        total = np.asarray((weights @ self.values).todense())
        measured = np.asarray((weights @ self.panel_onehot).todense()) @ self.table
        mean = np.divide(total, measured, out=np.zeros_like(total), where=measured > 0)
        return (
            torch.as_tensor(mean, dtype=torch.float32, device=z.device),
            torch.as_tensor(measured > 0, dtype=torch.float32, device=z.device),
        )
