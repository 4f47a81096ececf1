"""Advisor rules, one module per family; each rule takes Measurements and returns
a Suggestion, a NotEvaluated, or None (nothing to say)."""
