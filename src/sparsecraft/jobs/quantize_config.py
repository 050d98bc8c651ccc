"""Recipe sections for quantization: ``quantize`` (the grid of a quantizing one-shot method:
sparsegpt's joint mode, gptq, gqsa) and ``tune`` (GQSA's stage 2, end-to-end tuning of the
scales, :func:`sparsecraft.oneshot.scale_tuning.tune_scales`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.recipe import Strict

TUNE_LOSSES = ("lm", "squarehead")


class QuantizeConfig(Strict):
    bits: int = 4  #: 4 or 8
    group: int = 64  #: inputs per scale, a multiple of 16 that divides every layer's inputs
    sym: bool = True
    embedding: int | None = None  #: also quantize the embedding / LM head to 4 or 8 bits

    @model_validator(mode="after")
    def _check(self) -> QuantizeConfig:
        from sparsecraft.quant.grid import parse_spec

        try:
            parse_spec(self.model_dump())
        except SparsecraftError as e:
            raise ValueError(str(e)) from None
        return self

    def label(self) -> str:
        return f"W{self.bits}" + (f" E{self.embedding}" if self.embedding else "")

    def as_option(self) -> dict[str, Any]:
        return self.model_dump()


class TuneConfig(Strict):
    steps: int = Field(0, ge=0)  #: 0 = no scale tuning
    lr: float = Field(1e-5, gt=0)
    loss: str = "lm"

    @model_validator(mode="after")
    def _loss(self) -> TuneConfig:
        if self.loss not in TUNE_LOSSES:
            raise ValueError(f"unknown tune loss {self.loss!r}; allowed: {', '.join(TUNE_LOSSES)}")
        return self


def preflight_quantize(model: Any, runs: list[Any], targets: list[str] | None, ignore: list[str] | None) -> None:
    """Refuse, right after the model is loaded and before any evaluation or file, what a method
    would refuse later: a pattern or sparsity it cannot produce, a quantization group that does
    not divide a target layer's inputs (the one-line error names the layer)."""
    from sparsecraft.oneshot.base import make_pruner
    from sparsecraft.oneshot.blockwise import block_targets, find_blocks
    from sparsecraft.quant.grid import parse_spec

    for r in runs:
        if getattr(r, "method", None) is not None:
            options = {"quantize": r.quantize.as_option()} if r.quantize is not None else {}
            pruner = make_pruner(r.method, **options)
            pruner.check_pattern(r.pattern)
            pruner.check_sparsity(r.sparsity, [])
    specs = [parse_spec(r.quantize.as_option()) for r in runs if getattr(r, "quantize", None) is not None]
    if not specs:
        return
    stack = find_blocks(model)
    for ts in block_targets(model, stack, targets, ignore or []):
        for t in ts:
            for spec in specs:
                spec.check_layer(t.layout.cols, t.name)
