"""Saved models as data: writing a model's folder (safetensors and JSON) and reading it back without running code."""
