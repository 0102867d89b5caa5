"""Perceptual attacks (the columns of Jin & Rinard's Table 1) as Laidlaw et al. (2021) evaluate them:
StAdv, ReColorAdv, JPEG-L-inf, and the NPTM attacks LPA and PPGD under a fixed LPIPS network. Written
from the papers and the perceptual-advex code (which does not import with current torchvision); each
module says where it departs. Each raises ``NotApplicable`` with the reason where it does not apply."""

from robustlib.attacks.perceptual.jpeg import jpeg
from robustlib.attacks.perceptual.lpa import lpa, lpips_distance, lpips_features, ppgd
from robustlib.attacks.perceptual.recoloradv import recoloradv
from robustlib.attacks.perceptual.stadv import stadv

PERCEPTUAL_ATTACKS = {"stadv": stadv, "recoloradv": recoloradv, "jpeg": jpeg, "lpa": lpa, "ppgd": ppgd}
NEEDS_LPIPS = ("lpa", "ppgd")
"""Attacks that take the fixed LPIPS network (``lpips_net=``)."""
THREAT_OF = {"stadv": "stadv", "recoloradv": "recoloradv", "jpeg": "jpeg", "lpa": "nptm", "ppgd": "nptm"}
"""Each perceptual attack's threat model: LPA and PPGD share the LPIPS ball (NPTM), the others are
their own; the per-example worst case is taken over the attacks of one threat model."""

__all__ = ["NEEDS_LPIPS", "PERCEPTUAL_ATTACKS", "THREAT_OF", "jpeg", "lpa", "lpips_distance", "lpips_features", "ppgd",
           "recoloradv", "stadv"]
