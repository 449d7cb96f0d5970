"""``kiln serve``: any kiln artifact behind the Open Inference Protocol (KServe v2).

The protocol Triton, OpenVINO Model Server, KServe and Seldon MLServer speak, over REST with JSON
tensors and the binary tensor extension that ``tritonclient`` uses by default; requests are
gathered into batches (:mod:`kiln.serve.batcher`) and run through the artifact's own
:class:`~kiln.targets.base.Runner`, one batch at a time.

Modules: :mod:`~kiln.serve.protocol` (tensor encoding and validation, no web stack),
:mod:`~kiln.serve.batcher` (dynamic batching on a worker thread), :mod:`~kiln.serve.model`
(the loaded artifact and its v2 metadata), :mod:`~kiln.serve.metrics` (Prometheus),
:mod:`~kiln.serve.app` (Starlette routes), :mod:`~kiln.serve.wire` (the HTTP/1.1 layer: the
request head's limits) and :mod:`~kiln.serve.server` (uvicorn, signals).
The web stack (the ``serve`` extra) is imported only inside the functions that need it, so
importing this package costs nothing and a missing extra is one line naming it.
"""
