"""`repro-audit ops`: every nondeterministic op of one run, and the zoom-in of `check` to the first op."""
