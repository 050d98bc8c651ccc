"""Runnable recipe kinds (one module each, registered in :data:`sparsecraft.recipe.JOBS`)."""
