"""Tensor operations shared by plugins and the core: energies, perturbations, the energy-descent loop."""
