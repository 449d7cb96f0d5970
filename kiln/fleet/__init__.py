"""``kiln fleet`` and ``kiln node``: the build and benchmark plan of a suite as Ray tasks.

- :mod:`kiln.fleet.suite`: the suite file (models, targets, bench settings).
- :mod:`kiln.fleet.resources`: a node's Ray resources from its fingerprint, a task's request
  from the registry, and whether any live node can serve it.
- :mod:`kiln.fleet.store`: one content-addressed store (a folder, a shared filesystem or an
  fsspec URL such as ``s3://``), write then commit.
- :mod:`kiln.fleet.plan`: export -> build -> bench tasks with their keys and dependencies.
- :mod:`kiln.fleet.tasks`: what runs on a node (plain functions; Ray only calls them).
- :mod:`kiln.fleet.runner`: the driver: connect or start a cluster, submit, watch, cancel.
- :mod:`kiln.fleet.report`: the fleet's ``results.json`` and a report grouped by hardware kind.

Ray is the ``fleet`` extra and is imported only by :mod:`kiln.fleet.runner` and
:mod:`kiln.fleet.node`, inside functions.
"""
