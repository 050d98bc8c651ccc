"""FTP: a learned router that skips decoder blocks per token under a budget.

Paper: "FTP: A Fine-grained Token-wise Pruner for Large Language Models via Token Routing" (Li et
al. 2024, papers.txt). Instead of removing whole blocks (ShortGPT, BlockPruner), a small router
looks at a few *low-dimensional* factors of each token before each block and decides whether the
token goes through the block or around it (``h_out = h_in`` for a skipped token); the model stays
frozen, only the router is trained, with three losses: a *guide* loss (agree with an importance
label), a *sparsity constraint* (the kept fraction meets the budget) and *distillation* (the routed
model's next-token distribution matches the dense one). The claim: at the same fraction of skipped
(token, block) pairs, token-wise routing loses much less than skipping whole blocks.

Here (:class:`TokenRouter`): four factors per token and block, computed from what the model has
at that point: the log position, the log RMS of the block's input, how much the *previous* block
changed the token (``1 - cos`` of its input and output: a per-token Block Influence) and the
block's relative depth; a 4-16-1 MLP shared by the blocks plus a bias per block gives a keep score.
The guide label of a (token, block) pair is "kept" when the block's per-token influence
``1 - cos(x, f(x))`` on the dense model is above the budget's quantile over all pairs.
Training: the guide + sparsity losses on the dense model's factors, then ``distill_steps`` of
KL distillation through the frozen model with hard keep decisions in the forward pass and the
sigmoid's gradient (straight-through). At inference one threshold on the score, calibrated on the
calibration windows under routing, sets the budget; the skipped fraction reported is the one
measured on the evaluation windows. The baseline skips the same fraction of whole blocks, those
of lowest Block Influence (:func:`sparsecraft.structure.block_influence`, ShortGPT).

The first token of a window is never skipped by default (``keep_first``): SmolLM2 builds its
attention sink there in blocks 0-2 and 9-11 (its per-token influence is 0.25-0.98 in those blocks,
~0 elsewhere), and a 4-factor router that learned to skip it there lost to whole-block skipping at
every budget (docs/lab.md gives the numbers of that run).

Simplification: a skipped token's block output is dropped (``h_out = h_in``) but the block still
runs on it, so its keys and values stay visible to the other tokens' attention; FTP removes it from
the block. This measures the quality side of token routing, not its speed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int
from sparsecraft.oneshot.blockwise import find_blocks

N_FACTORS = 4


def token_factors(x: torch.Tensor, prev_in: torch.Tensor | None, block: int, n_blocks: int) -> torch.Tensor:
    """The (b, L, 4) router input of one block: log(1 + position) / log(2048), log RMS of the
    block input ``x``, ``1 - cos(prev_in, x)`` (what the previous block did to the token; 0 for the
    first block) and ``block / (n_blocks - 1)``."""
    b, L, _ = x.shape
    xf = x.detach().float()
    pos = torch.log1p(torch.arange(L, dtype=torch.float32)) / math.log(2048.0)
    rms = torch.log(xf.pow(2).mean(-1).sqrt() + 1e-6)
    change = (torch.zeros(b, L) if prev_in is None
              else 1 - F.cosine_similarity(prev_in.detach().float(), xf, dim=-1))
    depth = torch.full((b, L), block / max(n_blocks - 1, 1))
    return torch.stack([pos.expand(b, L), rms, change, depth], dim=-1)


class TokenRouter(nn.Module):
    """Keep score of every (token, block): a small MLP on :func:`token_factors` plus a per-block bias."""

    def __init__(self, n_blocks: int, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        check_int("n_blocks", n_blocks, 1)
        torch.manual_seed(seed)
        self.n_blocks = n_blocks
        self.mlp = nn.Sequential(nn.Linear(N_FACTORS, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.block_bias = nn.Parameter(torch.zeros(n_blocks))

    def forward(self, factors: torch.Tensor, block: int | torch.Tensor) -> torch.Tensor:
        return self.mlp(factors).squeeze(-1) + self.block_bias[block]


def skip_update(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x + keep * (y - x)``: a token with keep 0 bypasses the block (its output is its input)."""
    return x + keep.unsqueeze(-1).to(y.dtype) * (y - x)


@contextlib.contextmanager
def routed(model: nn.Module, mode: str, *, router: TokenRouter | None = None, threshold: float = 0.0,
           skip_blocks: Sequence[int] = (), keep_first: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Run ``model`` with per-token block skipping while the context is open.

    ``mode``: ``"record"`` (dense; records factors and per-token influence ``1 - cos(x, f(x))``),
    ``"hard"`` (keep when the router's score > ``threshold``), ``"train"`` (hard decisions at
    ``threshold`` forward, sigmoid gradient backward; records the gates) or ``"static"`` (skip every
    token in ``skip_blocks``). ``keep_first``: the router never skips the first token of a window
    (the attention sink: its hidden state is built in a few early and middle blocks and every other
    token attends to it). Yields the record: ``factors``, ``influence``, ``scores``, ``keep``,
    ``gates`` (one tensor per block and forward call)."""
    if mode not in ("record", "hard", "train", "static"):
        raise SparsecraftError(f"routing mode must be record, hard, train or static, got {mode!r}")
    if mode in ("hard", "train") and router is None:
        raise SparsecraftError(f"routing mode {mode!r} needs a router")
    stack = find_blocks(model)
    n = len(stack.blocks)
    if router is not None and router.n_blocks != n:
        raise SparsecraftError(f"the router has {router.n_blocks} blocks, the model {n}")
    bad = [i for i in skip_blocks if not 0 <= int(i) < n]
    if bad:
        raise SparsecraftError(f"skip_blocks {bad} out of range for the {n} blocks")
    rec: dict[str, list[torch.Tensor]] = {k: [] for k in ("factors", "influence", "scores", "keep", "gates")}
    state: dict[str, Any] = {}

    def pre(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            if i == 0:
                state["prev"] = None
            state["factors"] = token_factors(x, state["prev"], i, n) if mode != "static" else None
            state["prev"] = x
        return fn

    def post(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, (tuple, list)) else out
            if mode == "record":
                rec["factors"].append(state["factors"])
                rec["influence"].append(1 - F.cosine_similarity(x.detach().float(), y.detach().float(), dim=-1))
                return None
            if mode == "static":
                keep = torch.full(x.shape[:2], 0.0 if i in skip_blocks else 1.0)
            else:
                s = router(state["factors"], i)
                hard = (s > threshold).float()
                if keep_first:
                    hard[:, 0] = 1.0
                rec["scores"].append(s.detach())
                if mode == "train":
                    g = torch.sigmoid(s - threshold)
                    rec["gates"].append(g)
                    keep = hard + g - g.detach()
                else:
                    keep = hard
            rec["keep"].append(keep.detach())
            new = skip_update(x, y, keep)
            return (new, *out[1:]) if isinstance(out, (tuple, list)) else new
        return fn

    handles = []
    for i, blk in enumerate(stack.blocks):
        handles.append(blk.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(blk.register_forward_hook(post(i), with_kwargs=True))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def skipped_fraction(rec: dict[str, list[torch.Tensor]]) -> float:
    """Fraction of (token, block) pairs that bypassed their block in a record."""
    keep = torch.cat([k.flatten() for k in rec["keep"]])
    return float(1 - keep.mean())


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def dense_record(model: nn.Module, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """One dense pass over the (n, L) ``windows``: the next-token log-probabilities (teacher),
    the router factors (n_blocks, n * L, 4) and the per-token influence (n_blocks, n * L)."""
    n = len(find_blocks(model).blocks)
    with routed(model, "record") as rec:
        teacher = torch.stack([F.log_softmax(_logits(model, w[None])[0].float(), -1) for w in windows])
    feats = torch.stack([torch.cat([f[0] for f in rec["factors"][j::n]]) for j in range(n)])
    infl = torch.stack([torch.cat([v[0] for v in rec["influence"][j::n]]) for j in range(n)])
    return {"teacher": teacher, "factors": feats, "influence": infl}


def train_router(model: nn.Module, windows: torch.Tensor, fraction: float, *, record: dict | None = None,
                 guide_steps: int = 300, distill_steps: int = 0, lr: float = 1e-2, sparsity_weight: float = 10.0,
                 calibration_rounds: int = 2, keep_first: bool = False, seed: int = 0) -> tuple[TokenRouter, float]:
    """Train a router for skipping ``fraction`` of the (token, block) pairs of the frozen ``model``
    on the calibration ``windows`` (n, L); returns it with its calibrated score threshold.

    Guide stage: binary cross-entropy of the score against the label "per-token influence above
    the ``fraction`` quantile" plus ``sparsity_weight * (mean sigmoid(score) - (1 - fraction))^2``,
    on the factors of the dense model (``record`` from :func:`dense_record`, computed when not
    given). Distillation stage (``distill_steps``, one window each): KL(dense || routed) of the
    next-token distributions per token, with straight-through hard decisions, plus the sparsity
    term on the routed gates. Then ``calibration_rounds`` times the threshold is set to the
    ``fraction`` quantile of the scores seen under routing (a fixed-point step: the factors of
    later blocks depend on the earlier decisions)."""
    check_float("fraction", fraction, 0.0, 1.0, open_low=True)
    n = len(find_blocks(model).blocks)
    router = TokenRouter(n, seed=seed)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        record = record if record is not None else dense_record(model, windows)
        feats, infl = record["factors"], record["influence"]
        label = (infl > torch.quantile(infl.flatten(), fraction)).float()
        blocks = torch.arange(n)[:, None].expand_as(infl)
        opt = torch.optim.Adam(router.parameters(), lr=lr)
        for _ in range(guide_steps):
            opt.zero_grad()
            s = router(feats, blocks)
            loss = F.binary_cross_entropy_with_logits(s, label)
            loss = loss + sparsity_weight * (torch.sigmoid(s).mean() - (1 - fraction)) ** 2
            loss.backward()
            opt.step()
        threshold = float(torch.quantile(router(feats, blocks).detach().flatten(), fraction))
        for step in range(distill_steps):
            j = step % len(windows)
            opt.zero_grad()
            with routed(model, "train", router=router, threshold=threshold, keep_first=keep_first) as r:
                student = F.log_softmax(_logits(model, windows[j][None])[0].float(), -1)
            gates = torch.cat([g.flatten() for g in r["gates"]])
            kl = F.kl_div(student, record["teacher"][j], log_target=True, reduction="batchmean")
            loss = kl + sparsity_weight * (gates.mean() - (1 - fraction)) ** 2
            loss.backward()
            opt.step()
        for _ in range(calibration_rounds):
            with torch.no_grad(), routed(model, "hard", router=router, threshold=threshold,
                                         keep_first=keep_first) as r:
                for w in windows:
                    _logits(model, w[None])
            threshold = float(torch.quantile(torch.cat([s.flatten() for s in r["scores"]]), fraction))
    finally:
        for p, req in zip(model.parameters(), requires):
            p.requires_grad_(req)
    return router, threshold


def compare(model: nn.Module, calib: torch.Tensor, evals: torch.Tensor, fractions: Sequence[float], *,
            guide_steps: int = 300, distill_steps: int = 0, calibration_rounds: int = 2,
            keep_first: bool = False, seed: int = 0) -> dict[str, Any]:
    """Perplexity on ``evals`` of the dense model, of the learned token router and of static block
    skipping (lowest Block Influence first) at each skipped fraction ``k / n_blocks`` nearest to
    each of ``fractions``."""
    from sparsecraft.evaluation.perplexity import perplexity
    from sparsecraft.structure.depth import block_influence

    n = len(find_blocks(model).blocks)
    dense = perplexity(model, evals, batch_size=1, progress=False)
    bi = block_influence(model, [w[None] for w in calib])
    order = sorted(range(n), key=lambda i: bi[i])
    record = dense_record(model, calib)
    rows = []
    for f in fractions:
        k = min(n - 1, max(1, round(f * n)))
        with routed(model, "static", skip_blocks=order[:k]):
            ppl_static = perplexity(model, evals, batch_size=1, progress=False)
        router, thr = train_router(model, calib, k / n, record=record, guide_steps=guide_steps,
                                   distill_steps=distill_steps, calibration_rounds=calibration_rounds,
                                   keep_first=keep_first, seed=seed)
        with torch.no_grad(), routed(model, "hard", router=router, threshold=thr, keep_first=keep_first) as r:
            ppl_router = perplexity(model, evals, batch_size=1, progress=False)
        rows.append({"fraction": k / n, "blocks_skipped": sorted(order[:k]), "static": ppl_static,
                     "router": ppl_router, "router_fraction": skipped_fraction(r)})
    return {"dense": dense, "block_influence": bi, "rows": rows}


@EXPERIMENTS.register("ftp-router")
class FTPRouterExperiment(Experiment):
    """FTP token-wise block skipping on SmolLM2-135M vs skipping whole blocks (ShortGPT order)."""

    paper = "FTP: A Fine-grained Token-wise Pruner for Large Language Models via Token Routing"
    claim = ("a learned router that skips blocks per token (frozen model, router trained with guide, sparsity and "
             "distillation losses) loses much less quality than removing whole blocks at the same token sparsity.")

    def __init__(self, model: str = "smollm2-135m", fractions: tuple[float, ...] = (0.1, 0.2, 0.3),
                 n_calib: int = 4, n_eval: int = 4, seq_len: int = 128, guide_steps: int = 300,
                 distill_steps: int = 8, calibration_rounds: int = 1, keep_first: bool = True,
                 seed: int = 0) -> None:
        if not isinstance(model, str) or not model:
            raise SparsecraftError(f"model must be a model name or path, got {model!r}")
        self.model = model
        if not fractions:
            raise SparsecraftError("fractions needs at least one skipped fraction")
        self.fractions = tuple(check_float("fraction", f, 0.0, 0.9, open_low=True) for f in fractions)
        self.n_calib, self.n_eval = check_int("n_calib", n_calib, 1), check_int("n_eval", n_eval, 1)
        self.seq_len = check_int("seq_len", seq_len, 8)
        self.guide_steps, self.distill_steps = check_int("guide_steps", guide_steps, 1), check_int(
            "distill_steps", distill_steps, 0)
        if not isinstance(keep_first, bool):
            raise SparsecraftError(f"keep_first must be True or False, got {keep_first!r}")
        self.keep_first = keep_first
        self.calibration_rounds, self.seed = check_int("calibration_rounds", calibration_rounds, 0), check_int(
            "seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        from sparsecraft.data.text import build_protocol
        from sparsecraft.models import load_model

        torch.set_num_threads(1)
        loaded = load_model(self.model)
        proto = build_protocol(loaded.tokenizer, "shakespeare", n_calib=self.n_calib, n_eval=self.n_eval,
                               seq_len=self.seq_len, seed=self.seed)
        res = compare(loaded.model, proto.calib, proto.eval, self.fractions, guide_steps=self.guide_steps,
                      distill_steps=self.distill_steps, calibration_rounds=self.calibration_rounds,
                      keep_first=self.keep_first, seed=self.seed)
        rows = [["0 (dense)", "-", f"{res['dense']:.2f}", "-", f"{res['dense']:.2f}"]]
        for r in res["rows"]:
            rows.append([f"{r['fraction']:.3f}", ", ".join(map(str, r["blocks_skipped"])), f"{r['static']:.2f}",
                         f"{r['router_fraction']:.3f}", f"{r['router']:.2f}"])
        table = LabTable(
            f"Perplexity of {self.model} on {self.n_eval} Shakespeare evaluation windows of {self.seq_len} tokens "
            f"(the published protocol uses 16 x 512; this is a reduced, noisier version) vs the fraction of "
            f"(token, block) pairs skipped; static = whole blocks of lowest Block Influence on {self.n_calib} "
            f"calibration windows; router = 4-factor token router trained on the same windows "
            f"({self.guide_steps} guide steps, {self.distill_steps} distillation steps"
            f"{', the first token never skipped' if self.keep_first else ''}), threshold calibrated there, "
            "fraction measured on the evaluation windows",
            ["target fraction", "static: blocks skipped", "static ppl", "router: measured fraction", "router ppl"],
            rows)
        parts = [f"{r['fraction']:.2f}: router {r['router']:.1f} at {r['router_fraction']:.3f} vs whole blocks "
                 f"{r['static']:.1f}" for r in res["rows"]]
        finding = f"dense perplexity {res['dense']:.2f}; skipped fraction " + "; ".join(parts) + "."
        return LabResult(self.name, self.claim, [table], finding, res)
