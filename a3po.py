"""A3PO: Adaptive and Asymmetric token-level advantage shaping for Policy Optimization.

A from-scratch, single-file reference of "Rethinking Sample Polarity in Reinforcement
Learning with Verifiable Rewards" (arXiv 2512.21625). See ../shared/A3PO_SPEC.md.
"""

# ============================== MATH (spec sections 1-4, 7) ==============================


# ============================== TRAINER (rollouts, steps, eval, checkpoints, CLI) =========
