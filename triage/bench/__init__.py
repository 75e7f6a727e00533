"""``triage bench ...``: each benchmark runs its baselines in the same run and
prints ratios, so figures compare like with like on whatever machine runs it."""
