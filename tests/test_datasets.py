from __future__ import annotations

import os
from pathlib import Path

import mudata as md
import pytest

from pengster import datasets
from pengster.datasets import _fetch

DATA_DIR = os.environ.get("PENGSTER_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA_DIR, reason="PENGSTER_DATA_DIR is unset; point it at the shared data folder")


@needs_data
@pytest.mark.parametrize(
    ("loader", "shapes"),
    [
        (datasets.bmmc_multiome, {"rna": (500, 600), "atac": (500, 600)}),
        (datasets.bmmc_cite, {"rna": (600, 1000), "prot": (600, 134)}),
        (datasets.mop_snareseq2, {"rna": (6968, 1677), "atac": (6968, 25734)}),
        (datasets.pbmc_cite_mosaic, {"rna": (1200, 500), "adt": (1200, 224)}),
        (datasets.pbmc_1k_protein, {"rna": (747, 630), "adt": (747, 17)}),
    ],
)
def test_loaders_read_local_files(loader, shapes, monkeypatch):
    def no_network(**kwargs):
        raise AssertionError(f"tried to download {kwargs['url']} although $PENGSTER_DATA_DIR holds the file")

    monkeypatch.setattr(_fetch.pooch, "retrieve", no_network)
    mdata = loader()
    assert isinstance(mdata, md.MuData)
    assert {key: adata.shape for key, adata in mdata.mod.items()} == shapes


@pytest.fixture
def fake_retrieve(monkeypatch, tmp_path):
    calls = []

    def retrieve(*, url, known_hash, fname, path, processor, progressbar):
        calls.append({"url": url, "known_hash": known_hash, "fname": fname, "processor": processor})
        target = tmp_path / fname
        target.write_bytes(b"")
        return [str(target)] if processor is not None else str(target)

    monkeypatch.setattr(_fetch.pooch, "retrieve", retrieve)
    monkeypatch.setattr(_fetch.pooch, "os_cache", lambda name: tmp_path / name)
    return calls


def test_download_bmmc_url_and_hash(fake_retrieve, monkeypatch, tmp_path):
    monkeypatch.delenv(_fetch.DATA_DIR_ENV, raising=False)
    path = _fetch.fetch("openproblems_bmmc_cite_starter.output_mod2.h5ad")
    (call,) = fake_retrieve
    assert call["url"] == (
        "https://raw.githubusercontent.com/openproblems-bio/neurips2021_multimodal_viash/edaa87933/resources_test/"
        "common/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter.output_mod2.h5ad"
    )
    assert call["known_hash"] == "sha256:aec93359c69cba9d6a764d954afe25b851fdbd271e659a51a6fa936666bafafc"
    assert call["processor"] is None
    assert path == tmp_path / "openproblems_bmmc_cite_starter.output_mod2.h5ad"


def test_download_pbmc_mosaic_from_wheel(fake_retrieve, monkeypatch, tmp_path):
    monkeypatch.setenv(_fetch.DATA_DIR_ENV, str(tmp_path / "empty"))
    _fetch.fetch("pbmc_cite_mosaic_midas.h5mu")
    (call,) = fake_retrieve
    assert call["url"].startswith("https://files.pythonhosted.org/packages/")
    assert call["url"].endswith("/scmidas-0.3.0-py3-none-any.whl")
    assert call["known_hash"] == "sha256:24df81372decc6d3edf6c2481d7b0c58f4685386d2ac938564946916f1bd9522"
    assert call["processor"].members == ["scmidas/data/quickstart_pbmc_mosaic.h5mu"]


def test_env_var_wins(fake_retrieve, monkeypatch, tmp_path):
    local = tmp_path / "mine"
    local.mkdir()
    (local / "openproblems_bmmc_multiome_starter.output_rna.h5ad").write_bytes(b"")
    monkeypatch.setenv(_fetch.DATA_DIR_ENV, str(local))
    path = _fetch.fetch("openproblems_bmmc_multiome_starter.output_rna.h5ad")
    assert path == local / "openproblems_bmmc_multiome_starter.output_rna.h5ad"
    assert fake_retrieve == []


@pytest.mark.parametrize("file_name", ["pbmc_1k_protein_v3.h5mu"])
def test_files_without_download_say_how_to_get_them(fake_retrieve, monkeypatch, tmp_path, file_name):
    monkeypatch.setenv(_fetch.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="PENGSTER_DATA_DIR") as error:
        _fetch.fetch(file_name)
    assert file_name in str(error.value) and "commit" in str(error.value)
    assert fake_retrieve == []


def test_registry_hashes_match_local_files():
    if not DATA_DIR:
        pytest.skip("PENGSTER_DATA_DIR is unset; point it at the shared data folder")
    import hashlib

    for file_name, remote in _fetch.REGISTRY.items():
        if remote is not None and remote.member is None:
            digest = hashlib.sha256(Path(DATA_DIR, file_name).read_bytes()).hexdigest()
            assert digest == remote.sha256, file_name
