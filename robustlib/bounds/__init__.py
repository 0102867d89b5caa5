"""Sound output bounds of ReLU networks (layer arithmetic, interval and linear relaxations, tolerance, Lipschitz)."""
