"""``kiln package``, ``verify``, ``keygen``, ``serve``: hand artifacts to devices and servers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kiln.cli.base import command, main
from kiln.errors import ConfigError

# ---- shipping: package, verify, keygen (kiln/ship/) ----


@main.command()
@click.argument("source", metavar="build/<model>|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    "targets",
    multiple=True,
    metavar="NAME[:PRECISION[:PRUNE]]",
    help="Only these artifacts (repeatable; default: every built one).",
)
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), default=Path("dist"), show_default=True, help="Output folder."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bundle", "model-repository"]),
    default="bundle",
    show_default=True,
    help="One .tar.gz per artifact, or a Triton / OpenVINO Model Server model repository.",
)
@click.option("--sign", "key", type=click.Path(path_type=Path), help="Sign each bundle with this Ed25519 key (PEM).")
@click.option(
    "--allow-ungated", is_flag=True, help="Also ship artifacts whose gate did not run here (the card says so)."
)
@command
def package(source: Path, targets: tuple[str, ...], out: Path, fmt: str, key: Path | None, allow_ungated: bool) -> None:
    """Write a reproducible release bundle per artifact: its files, manifest.json, golden/,
    MODEL_CARD.md and SHA256SUMS (and <bundle>.sig with --sign)."""
    from kiln.ship.select import artifact_folders

    folders = artifact_folders(source, targets)
    if fmt == "model-repository":
        if key is not None:
            raise ConfigError("--sign applies to bundles; a model repository is a folder (sign a bundle of it)")
        from kiln.manifest import Manifest
        from kiln.ship.repository import refusal, write_model_repository

        if not targets:
            # Every built artifact by default: those these servers cannot load are skipped, named;
            # an explicit --target that they cannot load is refused (exit 2).
            kept = []
            for folder in folders:
                why = refusal(Manifest.read(folder), allow_ungated)
                if why is None:
                    kept.append(folder)
                else:
                    click.echo(f"skipped {folder.name}: {why}", err=True)
            if not kept:
                raise ConfigError(
                    f"{source}: no artifact a Triton or OVMS model repository can hold; build onnxruntime or openvino"
                )
            folders = kept
        for written in write_model_repository(folders, out, allow_ungated=allow_ungated):
            click.echo(f"wrote {written}")
        return
    from kiln.ship.bundle import PackageOptions
    from kiln.ship.bundle import package as write_bundle

    options = PackageOptions(out=out, sign=key, allow_ungated=allow_ungated)
    for folder in folders:
        done = write_bundle(folder, options)
        state = "wrote" if done.changed else "unchanged"
        click.echo(f"{state} {done.bundle}" + (f" (signed: {done.signature.name})" if done.signature else ""))


@main.command()
@click.argument("bundle", metavar="BUNDLE.tar.gz|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@click.option(
    "--run", is_flag=True, help="Load the artifact here and replay its golden set under the gate's tolerance."
)
@click.option("--pubkey", type=click.Path(path_type=Path), help="Require <bundle>.sig to verify with this public key.")
@click.option("--extract", type=click.Path(path_type=Path), help="Keep the verified artifact in this folder.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads for --run (default: the runtime's own).")
@command
def verify(bundle: Path, run: bool, pubkey: Path | None, extract: Path | None, threads: int | None) -> None:
    """On the machine that will run it: signature, safe extraction, checksums, manifest, runtime and
    hardware, and with --run the golden set. Exit 7 integrity, 5 cannot run here, 3 golden breach."""
    import tempfile

    from kiln.errors import ParityError
    from kiln.ship.verify import verify as run_verify

    if not bundle.exists():
        raise ConfigError(f"{bundle} does not exist; pass a bundle kiln package wrote, or an artifact folder")
    with tempfile.TemporaryDirectory(prefix="kiln-verify-") as scratch:
        done = run_verify(bundle, extract or Path(scratch), run=run, pubkey=pubkey, threads=threads)
        for line in done.checks:
            click.echo(f"ok: {line}")
        for breach in done.breaches:
            click.echo(f"kiln: gate: {done.manifest.key}: {breach}", err=True)
        if done.breaches:
            sys.exit(ParityError.exit_code)
    where = f"; the artifact is in {done.folder}" if extract else ""
    click.echo(f"verified {bundle.name} ({done.manifest.target}:{done.manifest.precision}){where}")


@main.command()
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    help="A folder, or a path prefix (default: ./kiln-signing): writes PREFIX.pem (private, 0600) and PREFIX.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@command
def keygen(out: Path | None, force: bool) -> None:
    """Make an Ed25519 key pair for kiln package --sign and kiln verify --pubkey."""
    from kiln.ship.keys import keygen as make_keys

    private, public = make_keys(out, force=force)
    click.echo(f"wrote {private} (private: keep it secret) and {public} (give this to verifiers)")


# ---- serving: serve (kiln/serve/) ----


@main.command()
@click.argument("artifact", metavar="BUNDLE|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--max-batch", type=click.IntRange(min=1), help="Most rows per batch (default: the batch dim's max).")
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long the oldest request waits for others to share its batch; 0 turns batching off.",
)
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: the runtime's own).")
@click.option("--name", help="Model name in the URLs (default: the manifest's model).")
@click.option(
    "--max-queue", type=click.IntRange(min=1), default=256, show_default=True, help="Waiting requests before 503."
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=64.0,
    show_default=True,
    help="Largest request body (413 above it).",
)
@click.option("--pubkey", type=click.Path(path_type=Path), help="Check a bundle's Ed25519 signature with this key.")
@command
def serve(
    artifact: Path,
    host: str,
    port: int,
    max_batch: int | None,
    max_delay_ms: float,
    threads: int | None,
    name: str | None,
    max_queue: int,
    max_body_mb: float,
    pubkey: Path | None,
) -> None:
    """Serve an artifact over the Open Inference Protocol (KServe v2 REST, as Triton and OVMS speak
    it), with dynamic batching and Prometheus metrics at /metrics."""
    from kiln.serve.server import ServeSettings
    from kiln.serve.server import serve as run_server

    settings = ServeSettings(
        host=host,
        port=port,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        threads=threads,
        name=name,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        pubkey=pubkey,
        verbose=os.environ.get("KILN_VERBOSE") == "1",
    )
    run_server(artifact, settings, say=lambda line: click.echo(line, err=True))
