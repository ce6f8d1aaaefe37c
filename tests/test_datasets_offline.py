"""Without ``$PENGSTER_DATA_DIR`` and without a network, a dataset loader fails with one message naming the variable
and the fix, not a traceback of requests' connection pool."""

from __future__ import annotations

import pytest
import requests

from pengster import datasets
from pengster.datasets import _fetch


@pytest.fixture
def offline(monkeypatch, tmp_path):
    def no_network(*, url, **kwargs):
        raise requests.exceptions.ConnectionError(
            f"HTTPSConnectionPool(host='example', port=443): Max retries exceeded with url: {url}\n"
            "(Caused by NameResolutionError: Failed to resolve 'example')"
        )

    monkeypatch.setattr(_fetch.pooch, "retrieve", no_network)
    monkeypatch.setattr(_fetch.pooch, "os_cache", lambda name: tmp_path / "cache" / name)


@pytest.mark.parametrize("loader", [datasets.bmmc_cite, datasets.pbmc_cite_mosaic, datasets.mop_snareseq2])
def test_no_data_dir_and_no_network_names_the_variable(offline, monkeypatch, loader):
    monkeypatch.delenv(_fetch.DATA_DIR_ENV, raising=False)
    with pytest.raises(ConnectionError) as error:
        loader()
    message = str(error.value)
    assert "$PENGSTER_DATA_DIR is not set" in message
    assert "export PENGSTER_DATA_DIR=/path/to/data" in message
    assert "ConnectionError: HTTPSConnectionPool" in message and "https://" in message
    assert "\n" not in message


def test_data_dir_without_the_file_and_no_network_names_the_folder(offline, monkeypatch, tmp_path):
    monkeypatch.setenv(_fetch.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ConnectionError, match="openproblems_bmmc_multiome_starter.output_rna.h5ad is not in") as error:
        datasets.bmmc_multiome()
    assert f"$PENGSTER_DATA_DIR={tmp_path}," in str(error.value)
