"""Evaluation: clean/FGSM/PGD and AutoAttack accuracy, sanity checks, checkpoint selection, external models."""
