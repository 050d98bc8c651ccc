"""Orchestration: recipes, run folders and the runnable recipe kinds ("jobs"), one module each,
registered in :data:`sparsecraft.jobs.recipe.JOBS`."""

from sparsecraft.jobs.recipe import JOBS, Job, load_recipe, run_recipe

__all__ = ["JOBS", "Job", "load_recipe", "run_recipe"]
