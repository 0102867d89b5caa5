"""Attacks (FGSM, PGD, transfer, AutoAttack, the perceptual ones) on one ascent engine: import the submodules."""
