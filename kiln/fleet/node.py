"""``kiln node``: a Ray node that advertises this machine's hardware as resources.

It runs ``ray start`` (from the same environment) with the resources of
:func:`kiln.fleet.resources.here`, in the foreground (``--block``) so that stopping this process
stops the node. ``--print`` only shows the resources, for a KubeRay ``rayStartParams``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from kiln.fleet.errors import ClusterError
from kiln.fleet.resources import here


@dataclass(frozen=True)
class NodeOptions:
    address: str | None = None  # the head's host:port; None with head=True
    head: bool = False
    port: int = 6379
    kind: str | None = None
    num_cpus: int | None = None


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        raise ClusterError("kiln node needs Ray: pip install 'kiln[fleet]' -c constraints.txt")
    return found


def ray_start_argv(options: NodeOptions, resources: dict[str, float]) -> list[str]:
    argv = [ray_executable(), "start", "--block", f"--resources={json.dumps(resources, sort_keys=True)}"]
    if options.head:
        argv += ["--head", f"--port={options.port}", "--include-dashboard=false"]
    elif options.address:
        argv += [f"--address={options.address}"]
    else:
        raise ClusterError("kiln node needs --address HEAD (host:port of ray start --head) or --head")
    if options.num_cpus is not None:
        argv += [f"--num-cpus={options.num_cpus}"]
    return argv


def start(options: NodeOptions) -> None:
    """Replace this process with ``ray start --block``: its pid is the node's."""
    argv = ray_start_argv(options, here(options.kind))
    if Path.home().joinpath(".ray", "auth_token").is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # ray start --head turns token auth on by default
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
