"""Reference data for checking the fitter against published refits.

BNSL 4-digit addition (Caballero et al. 2023, "Broken Neural Scaling Laws", Figure 4 left):
test cross-entropy vs. training dataset size. The 17 data points are the ones published with
the paper in its official repository, github.com/ethancaballero/broken_neural_scaling_laws,
file ``fit_bnsl_and_extrapolate__4_digit_addition__dataset_size_x-axis.py``. The paper fits a
1-break BNSL to the first 14 points and extrapolates to the last 3; the reference numbers are
in ALGORITHMS.md ("Scaling laws") and below.
"""

from __future__ import annotations

import numpy as np

BNSL_ADDITION_X = np.array(
    [160, 192, 256, 320, 384, 448, 480, 512, 544, 576, 608, 640, 672, 736, 800, 864, 928],
    dtype=float,
)
BNSL_ADDITION_Y = np.array(
    [
        2.13809046,
        2.11813418,
        2.08955508,
        2.06988398,
        2.05404987,
        2.03837089,
        2.02814281,
        2.00496872,
        1.95576149,
        1.86313841,
        1.70891537,
        1.50637664,
        1.29754721,
        0.96559684,
        0.75856477,
        0.64768338,
        0.55695445,
    ]
)
BNSL_ADDITION_FIT_POINTS = 14
#: reference refit (1 break, log1p loss, first 14 points) and its errors (RMSLE in log y)
BNSL_ADDITION_REFERENCE = {
    "a": 0.414,
    "b": 2.277,
    "c0": 0.0551,
    "c1": 5.663,
    "d1": 612.6,
    "f1": 0.0592,
    "rmsle_fit": 0.000598,
    "rmsle_holdout": 0.0109,
}
