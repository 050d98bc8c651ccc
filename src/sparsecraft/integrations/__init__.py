"""Callbacks that plug sparse training into other frameworks' trainers (optional extras)."""
