"""Perceptual attacks as Laidlaw et al. (2021) evaluate them (StAdv, ReColorAdv, JPEG, LPA, PPGD): one module each."""
