"""Shipping: release bundles (``kiln package``), their check on the machine that runs them
(``kiln verify``), signing keys (``kiln keygen``) and the model repository for Triton and OpenVINO
Model Server (:mod:`kiln.ship.repository`).

A bundle is one gzipped tar, ``<model>-<target>-<precision>[-<prune>].tar.gz``, holding one folder
of the same name: the artifact's files and ``manifest.json`` (with ``golden/``, the inputs and
eager outputs ``verify --run`` replays), ``MODEL_CARD.md`` and ``SHA256SUMS`` (``sha256sum -c``
reads it). Its bytes depend only on the artifact: packaging twice gives the same file.
"""

from __future__ import annotations

SUMS = "SHA256SUMS"
CARD = "MODEL_CARD.md"
SUFFIX = ".tar.gz"
SIG_SUFFIX = ".sig"
