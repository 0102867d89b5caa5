"""Sound output bounds of ReLU networks (interval and linear relaxations, Lipschitz constants)."""
