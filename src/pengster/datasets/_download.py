"""Downloads that fail for want of a network say which environment variable avoids them."""

from __future__ import annotations

import os

import pooch

DATA_DIR_ENV = "PENGSTER_DATA_DIR"
"""Environment variable naming a folder that already holds the dataset files."""


def retrieve(file_name: str, *, url: str, **kwargs) -> str | list[str]:
    """``pooch.retrieve(url=url, **kwargs)``; a failed connection becomes one message naming :data:`DATA_DIR_ENV`.

    Parameters
    ----------
    file_name
        The dataset file this download is for, as the user would put it into ``$PENGSTER_DATA_DIR``.
    url
        What to download.
    **kwargs
        Passed to :func:`pooch.retrieve`.

    Returns
    -------
    What :func:`pooch.retrieve` returns.

    Raises
    ------
    ConnectionError
        When the download fails (no network, a proxy, a server error): the message names the URL, the error and
        ``$PENGSTER_DATA_DIR``.
    """
    try:
        return pooch.retrieve(url=url, **kwargs)
    except OSError as error:  # requests' errors are OSErrors too
        data_dir = os.environ.get(DATA_DIR_ENV)
        where = f"{file_name} is not in ${DATA_DIR_ENV}={data_dir}" if data_dir else f"${DATA_DIR_ENV} is not set"
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ConnectionError(
            f"{where}, and downloading {url} failed ({type(error).__name__}: {reason}); set {DATA_DIR_ENV} to a "
            f"folder holding {file_name} (e.g. export {DATA_DIR_ENV}=/path/to/data), or retry with network access."
        ) from error
