"""Tools that write a model's results into a MuData: embeddings and predictions, transferred labels."""

from ._transfer import transfer_labels
from ._write import write_results

__all__ = ["transfer_labels", "write_results"]
