"""Execute tutorial notebooks in place on the real data, and record what made the outputs.

Usage, from the repository root (the real data in ``../shared/data`` or ``$PENGSTER_DATA_DIR``)::

    .venv/bin/python tutorials/execute.py tutorials/01_snareseq2.ipynb [more notebooks ...]

Each notebook runs in a fresh kernel from the ``tutorials/`` folder with ``--threads`` CPU threads (default 1:
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``NUMBA_NUM_THREADS``; the notebooks also call
``torch.set_num_threads``; the first tutorial runs with ``--threads 2``). Its metadata gets ``pengster.version``
(checked against the installed package by ``tests/test_docs.py``), the thread count and the wall time of the run.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import pengster

HERE = Path(__file__).resolve().parent


PROGRESS = re.compile(r"^(Training|Epoch \d+/\d+):")
"""A line of the training progress bar (each redraw is a line in a notebook's stored output)."""


def strip_stderr(notebook: nbformat.NotebookNode) -> None:
    """Drop the libraries' warnings and progress messages (stderr), which name local paths and change run to run,
    the redraws of the training progress bar but its last one, and empty results (a model's repr prints its summary
    and returns an empty string)."""

    def kept(output) -> bool:
        if output.output_type == "stream":
            return output.name != "stderr"
        if output.output_type == "execute_result":
            return any(str(value).strip() for value in output.get("data", {}).values())
        return True

    for cell in notebook.cells:
        if cell.cell_type == "code":
            outputs = []
            for output in (output for output in cell.outputs if kept(output)):
                # a progress bar prints each redraw as its own stream output: join them, then keep the last redraw
                if output.output_type == "stream" and outputs and outputs[-1].get("name") == output.name:
                    outputs[-1].text += output.text
                else:
                    outputs.append(output)
            for output in outputs:
                if output.output_type == "stream":
                    output.text = last_progress_line(output.text)
            cell.outputs = outputs


def last_progress_line(text: str) -> str:
    """``text`` with only the last line of the progress bar (its final state) among its lines."""
    lines = re.split(r"[\r\n]", text)
    progress = [i for i, line in enumerate(lines) if PROGRESS.match(line)]
    if len(progress) < 2:
        return text
    return "\n".join(line for i, line in enumerate(lines) if i not in progress[:-1] and line.strip()) + "\n"


def execute(path: Path, *, threads: int = 1, timeout: int = 3600) -> float:
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
        "torch_threads": threads,
        "wall_time_s": round(wall_time),
        "executed": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    nbformat.write(notebook, path)
    return wall_time


def main() -> None:
    """Execute the notebooks named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the notebook sets torch's to match)")
    args = parser.parse_args()
    os.environ.setdefault("PENGSTER_DATA_DIR", str(HERE.parent.parent / "shared" / "data"))
    # numba (scanpy's neighbours and UMAP) would otherwise reset the OpenMP threads that torch shares to all cores
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[variable] = str(args.threads)
    if not Path(os.environ["PENGSTER_DATA_DIR"]).is_dir():
        raise SystemExit(
            f"PENGSTER_DATA_DIR={os.environ['PENGSTER_DATA_DIR']} does not exist; point it at the real data."
        )
    for path in args.notebooks:
        wall_time = execute(path, threads=args.threads)
        print(f"{path}: executed in {wall_time:.0f} s (pengster {pengster.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
