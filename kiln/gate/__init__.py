"""The gate: one verdict on an artifact against eager (parity on every output, the task metric,
generated tokens and perplexity), used alike by `kiln build`, `kiln verify` and golden sets.

- :mod:`kiln.gate.reference`: eager's answers, computed once per build, and the gate's check;
- :mod:`kiln.gate.verdict`: a causal LM's figures and their verdict (gate, golden set, verify);
- :mod:`kiln.gate.golden`: the golden set an artifact ships, and its replay (``verify --run``).

Parity figures and their tolerances are :mod:`kiln.parity`; task metrics :mod:`kiln.metrics`.
"""
