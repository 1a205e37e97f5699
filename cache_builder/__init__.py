"""Turning a model and a corpus into a cache: model sources, corpora, capture, the single-process build."""
