"""Serving fine-tunes: base models shared by several SparseGrad deltas, generation and predictions.

Pure torch + transformers (no web, no database): `worker/infer_server.py` puts it behind HTTP.
"""
