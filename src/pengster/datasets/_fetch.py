"""Find a dataset file in ``$PENGSTER_DATA_DIR`` or download it (pooch, sha256) into a cache."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pooch

from ._download import DATA_DIR_ENV, retrieve
from ._snareseq2 import download_mop_snareseq2

logger = logging.getLogger(__name__)

_OPENPROBLEMS = (
    "https://raw.githubusercontent.com/openproblems-bio/neurips2021_multimodal_viash/edaa87933/resources_test/common"
)
_SCMIDAS_WHEEL = (
    "https://files.pythonhosted.org/packages/78/cb/bf09c17b06f6f05dfa20a497c0d10d85ae0e434ec9cc3f851dfacdfb2b68/"
    "scmidas-0.3.0-py3-none-any.whl"
)


@dataclass(frozen=True)
class Remote:
    """Where a file can be downloaded: a URL with its sha256, and the archive member when it is zipped."""

    url: str
    sha256: str
    member: str | None = None


def _bmmc(dataset: str, file_name: str, sha256: str) -> Remote:
    return Remote(f"{_OPENPROBLEMS}/{dataset}/{file_name}", sha256)


REGISTRY: dict[str, Remote | None] = {
    "openproblems_bmmc_multiome_starter.output_rna.h5ad": _bmmc(
        "openproblems_bmmc_multiome_starter",
        "openproblems_bmmc_multiome_starter.output_rna.h5ad",
        "53efc0c9c9fb205587d18087e9010846c7532d8de23daea26ff5a410b029cea6",
    ),
    "openproblems_bmmc_multiome_starter.output_mod2.h5ad": _bmmc(
        "openproblems_bmmc_multiome_starter",
        "openproblems_bmmc_multiome_starter.output_mod2.h5ad",
        "f6d6368518a7e5ed0e19eb67f87370b017a1d98d735b9aedbad78dd93c84a068",
    ),
    "openproblems_bmmc_cite_starter.output_rna.h5ad": _bmmc(
        "openproblems_bmmc_cite_starter",
        "openproblems_bmmc_cite_starter.output_rna.h5ad",
        "9c9e6e67a874f54e2ec10829cc399bec011b226c42a070f8ddd494435de51f24",
    ),
    "openproblems_bmmc_cite_starter.output_mod2.h5ad": _bmmc(
        "openproblems_bmmc_cite_starter",
        "openproblems_bmmc_cite_starter.output_mod2.h5ad",
        "aec93359c69cba9d6a764d954afe25b851fdbd271e659a51a6fa936666bafafc",
    ),
    # byte-identical to scmidas/data/quickstart_pbmc_mosaic.h5mu inside the wheel (sha256 ba7e6581...)
    "pbmc_cite_mosaic_midas.h5mu": Remote(
        _SCMIDAS_WHEEL,
        "24df81372decc6d3edf6c2481d7b0c58f4685386d2ac938564946916f1bd9522",
        member="scmidas/data/quickstart_pbmc_mosaic.h5mu",
    ),
    # built by the pengster maintainers from public sources; no public URL serves this h5mu file
    "pbmc_1k_protein_v3.h5mu": None,
}

ASSEMBLED: dict[str, Callable[[], Path]] = {"mop_snareseq2_dev.h5mu": download_mop_snareseq2}
"""Files no URL serves as such: downloaded as their public parts and assembled (content-hash checked) in the cache."""

SOURCES = {
    "pbmc_1k_protein_v3.h5mu": (
        "GitHub openproblems-bio/neurips2021_multimodal_viash, resources_test/common/pbmc_1k_protein_v3.*, "
        "commit a0832a93 (MIT)"
    ),
}


def fetch(file_name: str) -> Path:
    """Path of a dataset file: from ``$PENGSTER_DATA_DIR`` when it is there, else downloaded and verified.

    Parameters
    ----------
    file_name
        A key of :data:`REGISTRY` or :data:`ASSEMBLED`.

    Returns
    -------
    Path to the local file.

    Raises
    ------
    FileNotFoundError
        When the file is not in ``$PENGSTER_DATA_DIR`` and has no public download.
    ConnectionError
        When the file is not in ``$PENGSTER_DATA_DIR`` and the download fails; the message names the variable.
    """
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        local = Path(data_dir) / file_name
        if local.is_file():
            logger.info("using %s from $%s", local, DATA_DIR_ENV)
            return local
        logger.info("%s is not in $%s=%s; trying a download", file_name, DATA_DIR_ENV, data_dir)
    if file_name in ASSEMBLED:
        return ASSEMBLED[file_name]()
    remote = REGISTRY[file_name]
    if remote is None:
        where = f"${DATA_DIR_ENV}={data_dir}" if data_dir else f"${DATA_DIR_ENV} (unset)"
        raise FileNotFoundError(
            f"{file_name} was not found in {where} and has no public download as that file. "
            f"Set {DATA_DIR_ENV} to a folder holding {file_name}; it was built from {SOURCES[file_name]}."
        )
    processor = pooch.Unzip(members=[remote.member]) if remote.member else None
    downloaded = retrieve(
        file_name,
        url=remote.url,
        known_hash=f"sha256:{remote.sha256}",
        fname=file_name if remote.member is None else Path(remote.url).name,
        path=pooch.os_cache("pengster"),
        processor=processor,
        progressbar=False,
    )
    return Path(downloaded[0] if isinstance(downloaded, list) else downloaded)
