"""Evaluation metrics: perplexity of causal LMs, embedding similarity of encoders."""
