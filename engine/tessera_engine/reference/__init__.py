"""Reference behaviour of InternVL2's official training code, for parity tests only.

The planner (TypeScript) decides every number; these functions recompute the same numbers the
way the official preprocessing does, so tests can assert both agree.
"""
