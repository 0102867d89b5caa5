"""Attacks: FGSM, PGD (L-inf, L2) with restarts, a transfer attack, AutoAttack with fatal checks, and
the perceptual attacks (StAdv, ReColorAdv, JPEG, LPA, PPGD); each returns an ``AttackResult``. All run
on one ascent engine, ``ascent.maximize``, which the adversarial-training terms (``ascent.ascend``) and
the verifier's pre-MILP attack share. ``pyautoattack`` is imported only when AutoAttack runs."""

from robustlib.attacks.autoattack import autoattack
from robustlib.attacks.common import AttackCheckError, NotApplicable
from robustlib.attacks.gradient import fgsm, pgd, transfer
from robustlib.attacks.perceptual import PERCEPTUAL_ATTACKS, jpeg, lpa, ppgd, recoloradv, stadv

__all__ = ["AttackCheckError", "NotApplicable", "PERCEPTUAL_ATTACKS", "autoattack", "fgsm", "jpeg", "lpa",
           "pgd", "ppgd", "recoloradv", "stadv", "transfer"]
