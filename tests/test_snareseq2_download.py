"""mop_snareseq2 without $PENGSTER_DATA_DIR: scMoMaT's raw files, served by a local HTTP server, rebuilt exactly."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pengster import datasets
from pengster.datasets import _fetch, _snareseq2


def _write_scmomat_files(local: md.MuData, folder: Path) -> None:
    """The local h5mu in scMoMaT's format, plus cells of the 4 libraries the dev file leaves out."""
    obs = local.obs
    used_barcodes = set(obs["barcode"].astype(str))
    spare_barcodes = [code for code in obs["barcode"].cat.categories if code not in used_barcodes]
    other_libraries = [name for name in obs["batch"].cat.categories if name not in _snareseq2.LIBRARIES]
    assert other_libraries and spare_barcodes, "the local file should carry the categories of all 12 libraries"
    rng = np.random.default_rng(0)
    batch = [other_libraries[i % len(other_libraries)] for i in range(len(spare_barcodes))]
    left_out = pd.DataFrame(
        {
            "Batch": batch,
            "Barcode": spare_barcodes,
            "Ident": rng.choice(obs["cell_type_fine"].cat.categories, len(spare_barcodes)),
        },
        index=[f"{library}_{code}" for library, code in zip(batch, spare_barcodes, strict=True)],
    )
    kept = pd.DataFrame(
        {
            "Batch": obs["batch"].astype(str),
            "Barcode": obs["barcode"].astype(str),
            "Ident": obs["cell_type_fine"].astype(str),
        }
    )
    meta = pd.concat([kept, left_out])
    # interleave the left-out libraries with the kept ones, as a real multi-library table may be
    order = np.argsort(np.r_[np.arange(len(kept)) * 2, np.arange(len(left_out)) * 2 + 1], kind="stable")
    meta = meta.iloc[order]
    folder.mkdir(parents=True, exist_ok=True)
    meta.to_csv(folder / "meta_c1.csv")
    position = pd.Series(np.arange(len(meta)), index=meta.index)
    for modality, raw_name in (("rna", "GxC1.npz"), ("atac", "RxC1.npz")):
        counts = local[modality].X
        noise = sp.random(
            len(left_out),
            counts.shape[1],
            density=0.005,
            format="csr",
            rng=rng,
            data_rvs=lambda n: rng.integers(1, 5, n),
        )
        stacked = sp.vstack([counts, noise]).tocsr()
        rows = position[list(kept.index) + list(left_out.index)].to_numpy()
        in_meta_order = stacked[np.argsort(rows)]
        # scMoMaT stores features x cells; integer counts
        sp.save_npz(folder / raw_name, in_meta_order.T.tocsc().astype(np.int64))
    (folder / "genes.txt").write_text("\n".join(local["rna"].var_names) + "\n")
    (folder / "regions.txt").write_text("\n".join(local["atac"].var_names) + "\n")


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def _serve(root: Path):
    """An HTTP server over ``root`` in a thread; yields (base_url, list of requested paths)."""
    requests: list[str] = []
    handler = type("Handler", (_RecordingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def _github_layout(raw: Path, root: Path) -> Path:
    """Copy raw files to ``root/{commit}/data/real/MOp_5batches/{name}``, as raw.githubusercontent.com lays them out."""
    for name, commit in _snareseq2.RAW_FILES.items():
        target = root / commit / _snareseq2.RAW_FOLDER / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((raw / name).read_bytes())
    return root


@pytest.fixture(scope="module")
def local_mdata(data_dir):
    path = data_dir / _snareseq2.FILE_NAME
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with md.set_options(pull_on_update=False):
        return md.read_h5mu(path)


@pytest.fixture(scope="module")
def raw_dir(local_mdata, tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    _write_scmomat_files(local_mdata, raw)
    return raw


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_pinned_hash_is_the_local_file(local_mdata):
    assert _snareseq2.content_sha256(local_mdata) == _snareseq2.CONTENT_SHA256


def test_content_hash_sees_a_single_count_and_a_label(local_mdata):
    reference = _snareseq2.content_sha256(local_mdata)
    changed = local_mdata.copy()
    changed["atac"].X.data[123] += 1
    assert _snareseq2.content_sha256(changed) != reference
    relabelled = local_mdata.copy()
    relabelled.obs["cell_type"] = relabelled.obs["cell_type"].cat.rename_categories({"Mis": "Misc"})
    assert _snareseq2.content_sha256(relabelled) != reference


def test_download_rebuilds_the_local_file_exactly(raw_dir, local_mdata, monkeypatch, tmp_path, no_proxy):
    monkeypatch.setenv(_fetch.DATA_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(_fetch.pooch, "os_cache", lambda name: tmp_path / "cache" / name)
    with _serve(_github_layout(raw_dir, tmp_path / "github")) as (base_url, requests):
        monkeypatch.setattr(_snareseq2, "RAW_BASE_URL", base_url)
        rebuilt = datasets.mop_snareseq2()
        assert sorted(requests) == sorted(
            f"/{commit}/{_snareseq2.RAW_FOLDER}/{name}" for name, commit in _snareseq2.RAW_FILES.items()
        )
        requests.clear()
        again = datasets.mop_snareseq2()
        assert requests == [], "the assembled file in the cache should be reused"

    assert (tmp_path / "cache" / "pengster" / _snareseq2.FILE_NAME).is_file()
    assert _snareseq2.content_sha256(rebuilt) == _snareseq2.CONTENT_SHA256
    assert _snareseq2.content_sha256(again) == _snareseq2.CONTENT_SHA256
    pd.testing.assert_frame_equal(rebuilt.obs, local_mdata.obs, check_names=False)
    for modality in ("rna", "atac"):
        pd.testing.assert_frame_equal(rebuilt[modality].obs, local_mdata[modality].obs, check_names=False)
        pd.testing.assert_frame_equal(rebuilt[modality].var, local_mdata[modality].var, check_names=False)
        for part in ("data", "indices", "indptr"):
            expected = getattr(local_mdata[modality].X, part)
            actual = getattr(rebuilt[modality].X, part)
            assert actual.dtype == expected.dtype
            np.testing.assert_array_equal(actual, expected)
    assert rebuilt.uns["source"] == local_mdata.uns["source"]


def test_tampered_download_is_refused(raw_dir, tmp_path, no_proxy):
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in _snareseq2.RAW_FILES:
        (tampered / name).write_bytes((raw_dir / name).read_bytes())
    counts = sp.load_npz(tampered / "GxC1.npz").tocsc()
    counts.data[0] += 1  # one count of the first cell, which the dev file keeps
    sp.save_npz(tampered / "GxC1.npz", counts)
    cache = tmp_path / "cache"

    with _serve(_github_layout(tampered, tmp_path / "github")) as (base_url, _):
        with pytest.raises(ValueError, match="content sha256") as error:
            _snareseq2.download_mop_snareseq2(base_url=base_url, cache_dir=cache)
    assert _snareseq2.CONTENT_SHA256 in str(error.value) and "PENGSTER_DATA_DIR" in str(error.value)
    assert not (cache / _snareseq2.FILE_NAME).exists()


def test_raw_matrix_of_the_wrong_orientation_is_named(raw_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in _snareseq2.RAW_FILES:
        (raw / name).write_bytes((raw_dir / name).read_bytes())
    sp.save_npz(raw / "RxC1.npz", sp.load_npz(raw / "RxC1.npz").T.tocsr())
    with pytest.raises(ValueError, match=r"RxC1\.npz has shape .* regions x cells"):
        _snareseq2.build_mop_snareseq2(raw)


def test_raw_file_that_is_no_npz_is_named(raw_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in _snareseq2.RAW_FILES:
        (raw / name).write_bytes((raw_dir / name).read_bytes())
    (raw / "GxC1.npz").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ValueError, match=r"GxC1\.npz is not a scipy sparse \.npz.*git-lfs"):
        _snareseq2.build_mop_snareseq2(raw)
