"""Models as data: saved folders written and read back without running code, and what a reference is read for.

A saved model is safetensors and JSON (``_save``, ``_load``); query mapping reads a trained reference, a model or its
saved folder, into a summary (``_reference``).
"""
