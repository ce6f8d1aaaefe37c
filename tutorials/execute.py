"""Execute tutorial notebooks in place on the real data, and record what made the outputs.

Usage, from the repository root (the real data in ``../shared/data`` or ``$PENGSTER_DATA_DIR``)::

    .venv/bin/python tutorials/execute.py tutorials/01_snareseq2.ipynb [more notebooks ...]

Each notebook runs in a fresh kernel from the ``tutorials/`` folder with one CPU thread (``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` set to 1; the notebooks also call ``torch.set_num_threads(1)``). Its
metadata gets ``pengster.version`` (checked against the installed package by ``tests/test_docs.py``), the thread
count and the wall time of the run.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import pengster

HERE = Path(__file__).resolve().parent


def strip_stderr(notebook: nbformat.NotebookNode) -> None:
    """Drop the libraries' warnings and progress messages (stderr), which name local paths and change run to run,
    and empty results (a model's repr prints its summary and returns an empty string)."""

    def kept(output) -> bool:
        if output.output_type == "stream":
            return output.name != "stderr"
        if output.output_type == "execute_result":
            return any(str(value).strip() for value in output.get("data", {}).values())
        return True

    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if kept(output)]


def execute(path: Path, *, timeout: int = 1800) -> float:
    """Run ``path`` in place; return its wall time in seconds."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    ).execute()
    wall_time = time.perf_counter() - start
    strip_stderr(notebook)
    notebook.metadata["pengster"] = {
        "version": pengster.__version__,
        "torch_threads": 1,
        "wall_time_s": round(wall_time),
        "executed": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    nbformat.write(notebook, path)
    return wall_time


def main() -> None:
    """Execute the notebooks named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("PENGSTER_DATA_DIR", str(HERE.parent.parent / "shared" / "data"))
    # numba (scanpy's neighbours and UMAP) would otherwise reset the OpenMP threads that torch shares to all cores
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[variable] = "1"
    if not Path(os.environ["PENGSTER_DATA_DIR"]).is_dir():
        raise SystemExit(
            f"PENGSTER_DATA_DIR={os.environ['PENGSTER_DATA_DIR']} does not exist; point it at the real data."
        )
    for path in args.notebooks:
        wall_time = execute(path)
        print(f"{path}: executed in {wall_time:.0f} s (pengster {pengster.__version__}, 1 thread)")


if __name__ == "__main__":
    main()
