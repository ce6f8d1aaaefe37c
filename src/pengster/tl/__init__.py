"""Tools that write a model's results into a MuData."""

from ._write import write_results

__all__ = ["write_results"]
