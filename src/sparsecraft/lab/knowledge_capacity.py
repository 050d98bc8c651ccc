"""Knowledge capacity: how many bits of synthetic biographies a small LM stores per parameter.

Paper: "Physics of Language Models: Part 3.3, Knowledge Capacity Scaling Laws" (Allen-Zhu & Li
2024, papers.txt). Models trained on bioS(N) (:mod:`sparsecraft.lab.biographies`) for 1000
exposures per person store about 2 bits per parameter (100 exposures: about 1), dense or not; an
MoE with 32 experts loses only ~1.3x of that capacity counted over its *total* parameters.

Bits stored (the paper's bit-complexity lower bound, Sec. 3): a model whose mean cross-entropy
(nats) on the value token of attribute a is p_a must hold at least ``N log2(|V_a| / e^{p_a})``
bits about it (= the ``N log2 |V_a|`` bits of the data minus what the loss leaves unexplained);
the names, drawn without replacement from N0, add ``N log2((N0 - N) / e^{p_name})`` with p_name
the loss on the first occurrence of the full name. A perfect predictor of the attributes scores
``N sum_a log2 |V_a|``, the uniform guess 0. Each term is clamped at 0 (a model worse than the
uniform guess stores nothing about that attribute, it does not store negative bits).

Models: the project's :class:`~sparsecraft.moe.SparseLM` (Llama-style: RoPE attention, SwiGLU,
RMSNorm, tied embeddings), dense or with every FFN replaced by :class:`~sparsecraft.moe.MoEFFN`
(E experts, each as wide as the dense FFN, top-1 or top-2), trained with the library loop
(:func:`sparsecraft.training.loop.run_steps`, AdamW, warmup + cosine) for a fixed number of
exposures (epochs) per person. Parameters are counted as the paper does: all of them (total,
not active, for MoE; the tied embedding once).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.biographies import DEFAULT_SIZES, Population, Rendered, check_sizes, generate_population, render
from sparsecraft.moe.model import SparseLM, SparseLMConfig, update_router_biases
from sparsecraft.moe.stats import expert_load, reset_expert_load
from sparsecraft.training.causal_lm import LMTrainSettings, count_parameters, lm_loss, make_lm_optimizer
from sparsecraft.training.loop import lr_at, run_steps, shuffled_batches

LN2 = math.log(2.0)


def _per_person(name: str, loss: Any) -> np.ndarray:
    arr = np.asarray(loss, dtype=np.float64).reshape(-1)
    if arr.size < 1:
        raise SparsecraftError(f"{name}: bits need at least N = 1 person's loss, got none")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise SparsecraftError(f"{name}: losses must be finite cross-entropies >= 0 (nats)")
    return arr


def attribute_bits(size: int, losses: Any) -> float:
    """``max(0, N log2 |V| - sum_i loss_i / ln 2)`` = N log2(|V| / e^{p}) with p the mean loss
    (nats) of the N people on this attribute's value token (Allen-Zhu & Li 2024, Sec. 3)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SparsecraftError(f"an attribute's value set needs at least 1 value, got {size!r}")
    arr = _per_person("attribute", losses)
    return max(0.0, arr.size * math.log2(size) - float(arr.sum()) / LN2)


def name_bits(n_names: int, losses: Any) -> float:
    """The name term ``max(0, N log2((N0 - N) / e^{p_name}))``: N distinct names from N0 possible;
    ``losses`` are the per-person losses (nats) on the name's tokens (first occurrence, summed)."""
    arr = _per_person("name", losses)
    if isinstance(n_names, bool) or not isinstance(n_names, int) or n_names <= arr.size:
        raise SparsecraftError(f"the name term needs N0 > N possible names, got N0={n_names!r}, N={arr.size}")
    return max(0.0, arr.size * math.log2(n_names - arr.size) - float(arr.sum()) / LN2)


def bits_stored(losses: dict[str, Any], sizes: dict[str, int], name_losses: Any = None,
                n_names: int | None = None) -> dict[str, float]:
    """Bits per attribute, ``"attributes"`` (their sum), ``"name"`` (when ``name_losses`` is given)
    and ``"total"``; ``losses[a]`` = the N per-person losses (nats) on attribute a's value token."""
    sizes = check_sizes(sizes)
    missing = sorted(set(sizes) - set(losses))
    if missing:
        raise SparsecraftError(f"no losses for attribute(s) {', '.join(missing)}")
    out = {a: attribute_bits(s, losses[a]) for a, s in sizes.items()}
    if len({np.asarray(losses[a]).size for a in sizes}) != 1:
        raise SparsecraftError("every attribute needs one loss per person (the same N for all)")
    out["attributes"] = sum(out[a] for a in sizes)
    out["name"] = name_bits(int(n_names or 0), name_losses) if name_losses is not None else 0.0
    out["total"] = out["attributes"] + out["name"]
    return out


def max_bits(pop: Population) -> dict[str, float]:
    """What a perfect model would store: ``N sum_a log2 |V_a|`` and the name term at p_name = ln N
    (knowing the set of N names, nothing about their order)."""
    attrs = pop.n * sum(math.log2(s) for s in pop.sizes.values())
    names = max(0.0, pop.n * math.log2((pop.n_names - pop.n) / pop.n)) if pop.n_names > pop.n else 0.0
    return {"attributes": attrs, "name": names, "total": attrs + names}


@torch.no_grad()
def token_losses(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, L) cross-entropy (nats) of every token given the ones before it (column 0 = 0)."""
    was = model.training
    model.eval()
    rows = []
    try:
        for i in range(0, tokens.shape[0], batch_size):
            x = tokens[i:i + batch_size]
            logits = model(input_ids=x[:, :-1]).logits.float()
            ce = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            rows.append(torch.cat([torch.zeros(x.shape[0], 1), ce], dim=1))
    finally:
        model.train(was)
    return torch.cat(rows)


def measure_bits(model: torch.nn.Module, pop: Population, rendered: Rendered) -> dict[str, float]:
    """:func:`bits_stored` of ``model`` on the population's biographies."""
    ce = token_losses(model, rendered.tokens).double().numpy()
    losses = {a: ce[:, rendered.positions[a]] for a in pop.sizes}
    name = ce[:, rendered.positions["first"]] + ce[:, rendered.positions["last"]]
    return bits_stored(losses, pop.sizes, name, pop.n_names if pop.n_names > pop.n else None)


def capacity_model(vocab_size: int, seq_len: int, d_model: int, n_layers: int = 2, n_experts: int = 0,
                   top_k: int = 1, ffn_mult: int = 4, seed: int = 0) -> SparseLM:
    """A :class:`SparseLM` of width ``d_model`` (heads of 8 dims, FFN ``ffn_mult * d_model``), dense
    or (``n_experts > 0``) with every FFN an MoE of ``n_experts`` experts of the same width, top-``top_k``."""
    torch.manual_seed(seed)
    moe = {"n_experts": n_experts, "expert_dim": ffn_mult * d_model, "top_k": top_k} if n_experts else {}
    cfg = SparseLMConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=max(1, d_model // 8),
                         d_ff=ffn_mult * d_model, max_seq_len=seq_len, ffn="moe" if n_experts else "dense", moe=moe)
    return SparseLM(cfg)


def train_capacity(model: SparseLM, tokens: torch.Tensor, exposures: int, batch_size: int = 128,
                   lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0, progress: bool = False) -> float:
    """Next-token training on every biography ``exposures`` times (one epoch = one exposure of every
    person, shuffled with ``(seed, epoch)``), AdamW with 5% warmup and a cosine to 0.1 x ``lr``,
    gradient clip 1; returns the mean training loss of the last epoch."""
    n = tokens.shape[0]
    per_epoch = math.ceil(n / batch_size)
    total = per_epoch * exposures
    settings = LMTrainSettings(steps=total, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed)
    opt = make_lm_optimizer(model, settings)
    last: list[float] = []

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = shuffled_batches(n, batch_size, seed, step // per_epoch)[step % per_epoch]
        rows = tokens[idx]
        return rows[:, :-1], rows[:, 1:]

    def on_step(step: int, logs: dict[str, Any]) -> bool:
        if step > total - per_epoch:
            last.append(logs["loss"])
        return False

    run_steps(model, opt, batch_at, lm_loss, start=0, end=total,
              lr_fn=lambda t: lr_at(t, total, lr, warmup=max(1, total // 20), min_ratio=0.1), grad_clip=1.0,
              after_update=lambda: update_router_biases(model), on_step=on_step, progress=progress,
              desc="knowledge-capacity")  # fmt: skip
    return float(np.mean(last))


@EXPERIMENTS.register("knowledge-capacity")
class KnowledgeCapacityExperiment(Experiment):
    """Bits stored and bits per parameter of small dense and MoE LMs trained on bioS-style data."""

    paper = "Physics of Language Models: Part 3.3, Knowledge Capacity Scaling Laws"
    claim = ("language models store at most about 2 bits of knowledge per parameter (about 1 bit/param at 100 "
             "exposures per fact, 2 at 1000), whatever the architecture; MoE models, counted by their total "
             "parameters, lose little of that capacity (32 experts: ~1.3x less) despite using a fraction of "
             "the parameters per token.")

    def __init__(self, n_people: int = 600, sizes: dict[str, int] | None = None, n_first: int = 60,
                 n_last: int = 60, d_models: tuple[int, ...] = (8, 12, 16, 32, 48), n_layers: int = 2,
                 moe_d_model: int = 8, n_experts: int = 4, top_ks: tuple[int, ...] = (1, 2),
                 exposures: int = 200, batch_size: int = 50, lr: float = 3e-2, weight_decay: float = 0.01,
                 seed: int = 0) -> None:
        self.n_people = check_int("n_people", n_people, 1)
        self.sizes = check_sizes(DEFAULT_SIZES if sizes is None else sizes)
        self.n_first, self.n_last = check_int("n_first", n_first, 1), check_int("n_last", n_last, 1)
        if self.n_people >= self.n_first * self.n_last:
            raise SparsecraftError(f"n_people={n_people} needs fewer people than the {n_first} x {n_last} "
                                   "possible names (the name term needs N0 > N)")
        if not d_models:
            raise SparsecraftError("d_models needs at least one width")
        self.d_models = tuple(check_int("d_model", d, 8) for d in d_models)
        self.n_layers = check_int("n_layers", n_layers, 1)
        self.moe_d_model = check_int("moe_d_model", moe_d_model, 8)
        self.n_experts = check_int("n_experts", n_experts, 0)
        self.top_ks = tuple(check_int("top_k", k, 1, max(self.n_experts, 1)) for k in top_ks)
        self.exposures = check_int("exposures", exposures, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.lr = check_float("lr", lr, 0.0, 1.0, open_low=True)
        self.weight_decay = check_float("weight_decay", weight_decay, 0.0, 1.0)
        self.seed = check_int("seed", seed, 0)

    def _train(self, pop: Population, rendered: Rendered, d: int, n_experts: int = 0, top_k: int = 1,
               progress: bool = False) -> dict[str, Any]:
        model = capacity_model(len(rendered.vocab), rendered.tokens.shape[1], d, self.n_layers, n_experts, top_k,
                               seed=self.seed)
        loss = train_capacity(model, rendered.tokens, self.exposures, self.batch_size, self.lr, self.weight_decay,
                              self.seed, progress)
        params = count_parameters(model)
        reset_expert_load(model)
        bits = measure_bits(model, pop, rendered)
        loads = expert_load(model)  # routing of the measuring pass: busiest expert / mean, per layer
        return {"d_model": d, "n_experts": n_experts, "top_k": top_k, "params": params["total"],
                "active": params["active"], "embedding": model.embed_tokens.weight.numel(), "train_loss": loss,
                "bits": bits["total"], "attribute_bits": bits["attributes"], "name_bits": bits["name"],
                "bits_per_param": bits["total"] / params["total"],
                "busiest_expert": [round(x.max_load, 2) for x in loads], "dead_experts": [x.dead for x in loads]}

    def run(self, progress: bool = False) -> LabResult:
        torch.set_num_threads(1)
        cpu0 = time.process_time()
        pop = generate_population(self.n_people, self.sizes, self.n_first, self.n_last, self.seed)
        rendered = render(pop)
        ceiling = max_bits(pop)
        dense = [self._train(pop, rendered, d, progress=progress) for d in self.d_models]
        moe = [self._train(pop, rendered, self.moe_d_model, self.n_experts, k, progress)
               for k in self.top_ks] if self.n_experts else []
        base = next((r for r in dense if r["d_model"] == self.moe_d_model), None)
        if self.n_experts and base is None:
            base = self._train(pop, rendered, self.moe_d_model, progress=progress)

        def row(r: dict[str, Any], label: str) -> list[str]:
            return [label, str(r["params"]), str(r["params"] - r["embedding"]), str(r["active"]),
                    fmt(r["train_loss"], 3), f"{r['bits']:.0f}", f"{100 * r['bits'] / ceiling['total']:.0f}%",
                    fmt(r["bits_per_param"], 3)]

        columns = ["model", "parameters (total)", "non-embedding", "active / token", "last-epoch train loss",
                   "bits stored", "of max", "bits / parameter"]
        t1 = LabTable(
            f"Dense SparseLM ({self.n_layers} layers, FFN 4 x d) on {pop.n} synthetic people ({len(pop.sizes)} "
            f"attributes with {', '.join(f'{a} {s}' for a, s in pop.sizes.items())} values; {pop.n_first} x "
            f"{pop.n_last} names), {self.exposures} exposures per person (batch {self.batch_size}, AdamW lr "
            f"{self.lr:g}); the data holds {ceiling['total']:.0f} bits ({ceiling['attributes']:.0f} in the "
            f"attributes, {ceiling['name']:.0f} in the names)",
            columns, [row(r, f"dense d={r['d_model']}") for r in dense])
        tables = [t1]
        twin = min(dense, key=lambda r: abs(r["params"] - moe[0]["params"])) if moe else None
        if moe and base is not None and twin is not None:
            rows = [row(base, f"dense d={base['d_model']} (same width)")]
            if twin is not base:
                rows.append(row(twin, f"dense d={twin['d_model']} (closest total parameters)"))
            rows += [row(r, f"MoE d={r['d_model']}, {r['n_experts']} experts, top-{r['top_k']} (busiest expert "
                            f"{' / '.join(f'{x:.2f}' for x in r['busiest_expert'])} x the mean load per layer)")
                     for r in moe]
            tables.append(LabTable(
                f"MoE: the same d={self.moe_d_model} model with every FFN replaced by {self.n_experts} experts "
                "of the dense FFN's width (parameters counted in total, as the paper does; same data and "
                "training)", columns, rows))
        best = max(dense, key=lambda r: r["bits_per_param"])
        small = dense[0]
        finding = (f"the data holds {ceiling['total']:.0f} bits. Dense models store "
                   + ", ".join(f"{r['bits']:.0f} bits ({r['bits_per_param']:.2f} bits/param at {r['params']} "
                               f"params)" for r in dense)
                   + f"; the best ratio is {best['bits_per_param']:.2f} bits/param (d={best['d_model']}), the "
                   f"smallest model ({small['params']} params) stores {100 * small['bits'] / ceiling['total']:.0f}% "
                   f"of the data. This is {self.exposures} exposures per person, far fewer than the paper's 1000, "
                   "so the 2 bits/param level is not expected; the point is the shape of the curve.")
        if moe and base is not None and twin is not None:
            finding += (" MoE at d=" + str(self.moe_d_model) + ": "
                        + ", ".join(f"top-{r['top_k']} {r['bits']:.0f} bits = {r['bits_per_param']:.2f} bits per "
                                    f"total param ({r['params']} total, {r['active']} active)" for r in moe)
                        + f" vs the dense model of the same width {base['bits']:.0f} bits = "
                        f"{base['bits_per_param']:.2f} bits/param and the dense model of the closest total size "
                        f"(d={twin['d_model']}, {twin['params']} params) {twin['bits']:.0f} bits = "
                        f"{twin['bits_per_param']:.2f} bits/param.")
        cpu = time.process_time() - cpu0
        finding += f" CPU time of the whole run: {cpu:.0f} s (one thread; wall time grows with the machine's load)."
        return LabResult(self.name, self.claim, tables, finding,
                         {"max_bits": ceiling, "dense": dense, "moe": moe, "moe_base": base,
                          "moe_twin": twin, "cpu_s": cpu})
