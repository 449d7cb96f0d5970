"""``kiln tune``: search target x precision x quantizer options x threads (x requests in
throughput mode) for the fastest artifact within an accuracy budget.

Every candidate is built and gated by ``kiln build``'s code and timed beside eager by ``kiln
bench``'s harness; the result is the Pareto front (speed against metric drop and size), its
winner, ``tune.json`` and ``tune.html``, and optionally the winner as a ``kiln.toml``.

- :mod:`kiln.tune.space`: the search space, from the registry and each target's options model.
- :mod:`kiln.tune.search`: the staged search under a budget.
- :mod:`kiln.tune.session`: its state, and the one place that builds (``kiln build``) and measures
  (``kiln bench``).
- :mod:`kiln.tune.pareto`: dominance, the front and the winner, on figures alone.
- :mod:`kiln.tune.records`: what tune.json holds, typed.
- :mod:`kiln.tune.output`: the printed table, tune.html's page and the written config.
"""
