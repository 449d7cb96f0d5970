"""The benchmark harness: one timing loop for every target, each cell in its own worker process.

- :mod:`kiln.bench.run`: ``kiln bench`` (build, plan cells, measure, write the reports).
- :mod:`kiln.results`: what ``results.json`` holds, typed (its schema is generated from it).
- :mod:`kiln.bench.harness` and :mod:`kiln.bench.process`: workers, rounds, error cells.
- :mod:`kiln.bench.worker`: the worker process (``python -m kiln.bench.worker``), speaking the
  typed messages of :mod:`kiln.bench.protocol`.
- :mod:`kiln.bench.stats`: percentiles, spread, the unstable flag.
- :mod:`kiln.bench.flops` and :mod:`kiln.bench.peak`: FLOPs of the captured program and the
  machine's measured and theoretical peak (the roofline fraction).
- :mod:`kiln.bench.analysis`: speed-ups vs eager and the flags that catch wasted optimizations.
"""
