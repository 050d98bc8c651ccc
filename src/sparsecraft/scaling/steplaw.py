"""Step Law: optimal learning rate and batch size from model and data size.

"Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in LLM Pretraining"
(Li et al. 2025, step-law.github.io), fitted over 3,700 LLM trainings:

    lr_opt    = 1.79 * N^-0.713 * D^0.307
    batch_opt = 0.58 * D^0.571            (in tokens)

with ``N`` the non-embedding parameter count and ``D`` the number of training tokens.
Example: N = 1e8, D = 2e9 -> lr 2.54e-3, batch ~118.7k tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sparsecraft.errors import SparsecraftError

LR_COEF, LR_N_EXP, LR_D_EXP = 1.79, -0.713, 0.307
BS_COEF, BS_D_EXP = 0.58, 0.571


@dataclass(frozen=True)
class StepLaw:
    params: float
    tokens: float
    lr: float
    batch_tokens: float
    batch_sequences: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def step_law(params: float, tokens: float, seq_len: int | None = None) -> StepLaw:
    """Optimal LR and batch size (tokens; also sequences if ``seq_len`` is given)."""
    if not params > 0 or not tokens > 0:
        raise SparsecraftError(f"params and tokens must be > 0, got {params} and {tokens}")
    lr = LR_COEF * params**LR_N_EXP * tokens**LR_D_EXP
    bs = BS_COEF * tokens**BS_D_EXP
    seqs = None
    if seq_len is not None:
        if seq_len < 1:
            raise SparsecraftError(f"seq_len must be >= 1, got {seq_len}")
        seqs = bs / seq_len
    return StepLaw(float(params), float(tokens), float(lr), float(bs), seqs)
