"""Which cells of a minibatch measured which modalities, as row indices built on the host.

``mask.nonzero()`` on a GPU copies its result's size to the host and so waits for every kernel queued before it (a
sync); a training step needs a dozen such index sets. The device loader attaches the host copy of each ``obs`` field
it puts on the device (:func:`attach_host`), so :class:`MeasuredRows` builds the index sets on the host and copies
them to the device without waiting for it. Without an attached copy the masks are read from the device once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pengster.nn._carried import carried, carry

_HOST = "_pengster_host"


def attach_host(value: torch.Tensor, host: torch.Tensor) -> torch.Tensor:
    """Let ``value`` (on a device) carry ``host``, its copy on the host (see ``nn._carried``)."""
    return carry(value, _HOST, host)


def host_copy(value: torch.Tensor) -> torch.Tensor:
    """``value`` on the host: its attached copy (:func:`attach_host`) when it has an unchanged one, else read."""
    host = carried(value, _HOST)
    return value.detach().cpu() if host is None else host


def flat_view(value: torch.Tensor) -> torch.Tensor:
    """``value.view(-1)``, carrying ``value``'s attached host copy along."""
    flat = value.view(-1)
    host = carried(value, _HOST)
    return flat if host is None else attach_host(flat, host.reshape(-1))


class MeasuredRows:
    """Row indices of the cells that measured given modalities, on the device of ``has``, memoised per minibatch.

    Parameters
    ----------
    has
        Modality -> ``(n_cells,)`` 0/1 array of the minibatch (on the device; see :func:`host_copy`).
    """

    def __init__(self, has: Mapping[str, torch.Tensor]):
        self.device = next(iter(has.values())).device
        self.host = {m: host_copy(value).reshape(-1) > 0 for m, value in has.items()}
        self._rows: dict[tuple, torch.Tensor] = {}

    def to_device(self, index: torch.Tensor) -> torch.Tensor:
        """A host array on the device, through pinned memory on a GPU (an asynchronous copy)."""
        if self.device.type == "cuda":
            return index.pin_memory().to(self.device, non_blocking=True)
        return index.to(self.device)

    def of(self, *modalities: str, any_of: tuple[str, ...] = ()) -> torch.Tensor:
        """Rows (int64) of the cells that measured every one of ``modalities`` and, if given, one of ``any_of``."""
        key = (modalities, any_of)
        if key not in self._rows:
            mask = torch.stack([self.host[m] for m in modalities]).all(0)
            if any_of:
                mask = mask & torch.stack([self.host[m] for m in any_of]).any(0)
            self._rows[key] = self.to_device(mask.nonzero().view(-1))
        return self._rows[key]


__all__ = ["MeasuredRows", "attach_host", "flat_view", "host_copy"]
