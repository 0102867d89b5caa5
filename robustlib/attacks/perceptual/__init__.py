"""Perceptual attacks (the columns of Jin & Rinard's Table 1): StAdv, ReColorAdv, JPEG and LPA,
implemented from the papers (the ``perceptual-advex`` package does not import with current
torchvision). Each raises ``NotApplicable`` with the reason where it does not apply."""

from robustlib.attacks.perceptual.jpeg import jpeg
from robustlib.attacks.perceptual.lpa import lpa, lpips_distance
from robustlib.attacks.perceptual.recoloradv import recoloradv
from robustlib.attacks.perceptual.stadv import stadv

PERCEPTUAL_ATTACKS = {"stadv": stadv, "recoloradv": recoloradv, "jpeg": jpeg, "lpa": lpa}

__all__ = ["PERCEPTUAL_ATTACKS", "jpeg", "lpa", "lpips_distance", "recoloradv", "stadv"]
