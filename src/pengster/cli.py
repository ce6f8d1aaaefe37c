"""Command line: ``pengster demo``."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    """Run the ``pengster`` command line."""
    parser = argparse.ArgumentParser(prog="pengster", description="Multimodal single-cell integration.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train on the real BMMC multiome + CITE-seq mosaic and score it")
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--max-epochs", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from pengster._demo import run_demo

    run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
