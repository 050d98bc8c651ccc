"""Built-in data sources (no downloads at run time)."""
