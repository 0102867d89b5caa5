"""Objectives as weighted sums of named terms, and every term (the paper's and the baselines').

``build_objective({"ce": 1.0, "trades": {"weight": 6.0, "steps": 10}})`` builds an objective from a
params mapping; ``TERMS`` maps each name to its ``Term`` class. Modules:

* ``core``: ``StepContext`` (views evaluated in one forward pass), ``Term``/``TERMS``/``register_term``,
  ``Ramp``, ``Objective``, ``build_objective``; the ``ce`` term;
* ``manifold``: the paper's ``hamming``, ``stability`` and ``dense_laplacian`` (Jin & Rinard eqs. 10-17);
* ``gradients``: ``gradient_penalty``, ``jacobian`` (Hoffman et al. 2019), ``curvature`` (CURE);
* ``margins``: ``margin`` (multi-class hinge), ``lipschitz_margin`` (Tsuzuku et al. 2018);
* ``adversarial``: ``pgd_at`` (Madry et al.), ``fgsm`` (plain FGSM AT), ``fgsm_at`` (Wong et al.'s FGSM
  with random start), ``trades`` (Zhang et al.), ``arr``;
* ``certified``: ``ibp`` (Gowal et al. 2018), ``rs_loss`` and ``l1`` (Xiao et al. 2019);
* ``weight_decay``: the explicit ``1/2 ||theta||^2`` term.

Importing the package registers every term; nothing else happens at import.
"""

from robustlib.regularizers.adversarial import ARR, FGSMAT, PGDAT, TRADES, PlainFGSMAT, kl_divergence
from robustlib.regularizers.certified import (
    IBP,
    L1,
    RSLoss,
    conv_output_positions,
    ibp_worst_logits,
    relu_stability_loss,
)
from robustlib.regularizers.core import (
    TERMS,
    VIEWS,
    CrossEntropy,
    Objective,
    Ramp,
    StepContext,
    Term,
    WeightedTerm,
    build_objective,
    register_term,
)
from robustlib.regularizers.gradients import (
    Curvature,
    GradientPenalty,
    Jacobian,
    curvature_penalty,
    jacobian_frobenius_estimate,
    jacobian_frobenius_exact,
    loss_input_gradient,
)
from robustlib.regularizers.manifold import (
    DenseLaplacian,
    Hamming,
    Stability,
    dense_laplacian,
    hamming,
    heat_kernel,
    pairwise_hamming,
    stability,
)
from robustlib.regularizers.margins import LipschitzMargin, Margin, lipschitz_margin_logits, multiclass_hinge
from robustlib.regularizers.weight_decay import WeightDecay

__all__ = [
    "ARR", "FGSMAT", "IBP", "L1", "PGDAT", "PlainFGSMAT", "TERMS", "TRADES", "VIEWS", "CrossEntropy", "Curvature",
    "DenseLaplacian",
    "GradientPenalty", "Hamming", "Jacobian", "LipschitzMargin", "Margin", "Objective", "RSLoss", "Ramp",
    "Stability", "StepContext", "Term", "WeightDecay", "WeightedTerm", "build_objective", "conv_output_positions",
    "curvature_penalty",
    "dense_laplacian", "hamming", "heat_kernel", "ibp_worst_logits", "jacobian_frobenius_estimate",
    "jacobian_frobenius_exact", "kl_divergence", "lipschitz_margin_logits", "pairwise_hamming",
    "loss_input_gradient", "multiclass_hinge", "register_term", "relu_stability_loss", "stability",
]
