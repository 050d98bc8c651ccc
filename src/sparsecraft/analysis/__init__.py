"""Analysis of sparse models and of their training (mask dynamics, ...)."""
