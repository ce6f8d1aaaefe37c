"""module._rows: the minibatch's rows by measured modality, from the host copy the device loader attaches."""

from __future__ import annotations

import numpy as np
import torch

from pengster.model._device_loader import DeviceMinibatchLoader
from pengster.module._rows import MeasuredRows, attach_host, flat_view, host_copy


def test_measured_rows_from_the_attached_copy_and_read_when_there_is_none():
    device_has = {"rna": torch.tensor([1.0, 1.0, 0.0, 1.0]), "atac": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    protein = torch.tensor([[0.0], [1.0], [1.0], [1.0]])
    # an attached copy is what is read: here it deliberately differs from the values
    attach_host(device_has["atac"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    has = {**device_has, "protein": flat_view(attach_host(protein, protein.clone()))}
    assert has["protein"]._pengster_host[0].shape == (4,)  # the flat view carries the copy, flattened too
    measured = MeasuredRows(has)
    assert measured.of("rna").tolist() == [0, 1, 3]  # no copy attached: read
    assert measured.of("atac").tolist() == [2, 3]  # the attached copy
    assert measured.of("rna", "protein").tolist() == [1, 3]
    assert measured.of("protein", any_of=("rna", "atac")).tolist() == [1, 2, 3]
    assert measured.of("rna") is measured.of("rna")  # memoised
    # changed in place, the tensor no longer offers its copy
    device_has["atac"].zero_()
    assert host_copy(device_has["atac"]).tolist() == [0.0] * 4


def test_device_loader_attaches_the_host_copy_of_every_obs_field():
    counts = np.arange(12, dtype=np.float32).reshape(6, 2)
    has = np.array([[1], [0], [1], [1], [0], [1]], dtype=np.float32)
    loader = DeviceMinibatchLoader(
        {"x_rna": counts}, {"has_rna": has}, indices=np.arange(6), strata=np.zeros(6), batch_size=4, device="cpu"
    )
    for batch in loader:
        attached = batch["has_rna"]._pengster_host[0]
        torch.testing.assert_close(attached, batch["has_rna"])
        assert attached.data_ptr() != batch["has_rna"].data_ptr()  # a copy made on the host, not the value read
