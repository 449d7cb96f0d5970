"""``kiln package``, ``verify``, ``keygen``, ``serve``: hand artifacts to devices and servers."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln.cli import options
from kiln.cli.base import command, main
from kiln.cli.options import Group

if TYPE_CHECKING:
    from kiln.api import PackageSettings, VerifySettings
    from kiln.serve.server import ServeSettings

# ---- shipping: package, verify, keygen (kiln/ship/) ----


def _package_settings(targets: tuple[str, ...], fmt: str, **flags: Any) -> PackageSettings:
    from kiln.api import PackageSettings

    return PackageSettings(targets=targets, format=fmt, **flags)  # type: ignore[arg-type]


_PACKAGE_SETTINGS = Group(
    "settings",
    [
        options.targets("Only these artifacts (repeatable; default: every built one).", "NAME[:PRECISION[:PRUNE]]"),
        options.out(Path("dist"), "Output folder."),
        click.Option(
            ["--format", "fmt"],
            type=click.Choice(["bundle", "model-repository"]),
            default="bundle",
            show_default=True,
            help="One .tar.gz per artifact, or a Triton / OpenVINO Model Server model repository.",
        ),
        click.Option(
            ["--sign", "sign"], type=click.Path(path_type=Path), help="Sign each bundle with this Ed25519 key (PEM)."
        ),
        click.Option(
            ["--allow-ungated"],
            is_flag=True,
            help="Also ship artifacts whose gate did not run here (the card says so).",
        ),
    ],
    _package_settings,
)


@main.command()
@click.argument("source", metavar="build/<model>|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@command
@_PACKAGE_SETTINGS
def package(source: Path, settings: PackageSettings) -> None:
    """Write a reproducible release bundle per artifact: its files, manifest.json, golden/,
    MODEL_CARD.md and SHA256SUMS (and <bundle>.sig with --sign)."""
    from kiln.api import package as ship

    done = ship(source, settings)
    for folder, why in done.skipped:
        click.echo(f"skipped {folder.name}: {why}", err=True)
    for written in done.models:
        click.echo(f"wrote {written}")
    for bundle in done.bundles:
        state = "wrote" if bundle.changed else "unchanged"
        signed = f" (signed: {bundle.signature.name})" if bundle.signature else ""
        click.echo(f"{state} {bundle.bundle}{signed}")


def _verify_settings(
    max_members: int | None, max_file: str | None, max_unpacked: str | None, max_ratio: float | None, **flags: Any
) -> VerifySettings:
    from kiln.api import VerifySettings, archive_limits

    limits = archive_limits(max_members, max_file, max_unpacked, max_ratio)
    return VerifySettings(**flags, limits=limits)


# What a bundle may unpack to (kiln.ship.archive): verify and serve read bundles alike.
def _archive_limits() -> list[click.Option]:
    return [
        click.Option(
            ["--max-members"],
            type=click.IntRange(min=1),
            help="Most members a bundle may hold (default 20000).",
        ),
        click.Option(
            ["--max-file"],
            metavar="SIZE",
            help="Largest member, e.g. 300G (default 256 GiB).",
        ),
        click.Option(
            ["--max-unpacked"],
            metavar="SIZE",
            help="Most bytes a bundle may unpack to (default 512 GiB).",
        ),
        click.Option(
            ["--max-ratio"],
            type=click.FloatRange(min=1),
            help="Most unpacked bytes per bundle byte past the first 64 MiB (default 100).",
        ),
    ]


_VERIFY_SETTINGS = Group(
    "settings",
    [
        click.Option(
            ["--run"], is_flag=True, help="Load the artifact here and replay its golden set under the gate's tolerance."
        ),
        click.Option(
            ["--pubkey"], type=click.Path(path_type=Path), help="Require <bundle>.sig to verify with this public key."
        ),
        click.Option(
            ["--extract"],
            type=click.Path(path_type=Path),
            metavar="DIR",
            help="Keep the verified artifact in DIR/<bundle folder>, a new folder (DIR is created if missing).",
        ),
        options.threads("Runtime threads for --run (default: the runtime's own)."),
        *_archive_limits(),
    ],
    _verify_settings,
)


@main.command()
@click.argument("bundle", metavar="BUNDLE.tar.gz|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@command
@_VERIFY_SETTINGS
def verify(bundle: Path, settings: VerifySettings) -> None:
    """On the machine that will run it: signature, safe extraction, checksums, manifest, runtime and
    hardware, and with --run the golden set. Exit 7 integrity, 5 cannot run here, 3 golden breach."""
    from kiln.api import verify as check
    from kiln.errors import ParityError

    done = check(bundle, settings)
    for line in done.checks:
        click.echo(f"ok: {line}")
    for breach in done.breaches:
        click.echo(f"kiln: gate: {done.manifest.key}: {breach}", err=True)
    if done.breaches:
        sys.exit(ParityError.exit_code)
    where = f"; the artifact is in {done.folder}" if settings.extract else ""
    click.echo(f"verified {bundle.name} ({done.manifest.target}:{done.manifest.precision}){where}")


@main.command()
@click.option(
    "--out",
    "-o",
    type=click.Path(),  # a str: a trailing slash says "a folder", and Path() would drop it
    help="A folder (DIR/, created if missing, or an existing one) or a path prefix (default: ./kiln-signing): "
    "writes PREFIX.pem (private, 0600) and PREFIX.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@command
def keygen(out: str | None, force: bool) -> None:
    """Make an Ed25519 key pair for kiln package --sign and kiln verify --pubkey."""
    from kiln.ship.keys import keygen as make_keys

    private, public = make_keys(out, force=force)
    click.echo(f"wrote {private} (private: keep it secret) and {public} (give this to verifiers)")


# ---- serving: serve (kiln/serve/) ----


def _serve_settings(
    max_members: int | None, max_file: str | None, max_unpacked: str | None, max_ratio: float | None, **flags: Any
) -> ServeSettings:
    from kiln.api import archive_limits
    from kiln.serve.server import ServeSettings

    limits = archive_limits(max_members, max_file, max_unpacked, max_ratio)
    return ServeSettings(**flags, archive=limits, verbose=os.environ.get("KILN_VERBOSE") == "1")


def _limit(flag: str, kind: click.ParamType, default: float, help: str) -> click.Option:
    """A serve setting with a default the help shows."""
    return click.Option([flag], type=kind, default=default, show_default=True, help=help)


_SERVE_SETTINGS = Group(
    "settings",
    [
        click.Option(
            ["--host"], default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface)."
        ),
        click.Option(
            ["--port"], type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port."
        ),
        click.Option(
            ["--max-batch"], type=click.IntRange(min=1), help="Most rows per batch (default: the batch dim's max)."
        ),
        _limit(
            "--max-delay-ms",
            click.FloatRange(min=0),
            2.0,
            "How long the oldest request waits for others to share its batch; 0 turns batching off.",
        ),
        options.threads("Runtime threads (default: the runtime's own)."),
        click.Option(
            ["--name"],
            multiple=True,
            help="Model name in the URLs, one per artifact in order (default: the manifest's model; "
            "a causal LM's: its folder's name).",
        ),
        _limit("--max-queue", click.IntRange(min=1), 256, "Waiting requests before 503 (a causal LM's: 429)."),
        _limit(
            "--max-active",
            click.IntRange(min=1),
            8,
            "A causal LM's sequences decoding at once, in turn (each holds its KV cache); more wait in the queue.",
        ),
        click.Option(
            ["--engine"],
            type=click.Choice(["auto", "kiln", "openvino-genai"]),
            default="auto",
            show_default=True,
            help="A causal LM's engine: kiln's step scheduler, or OpenVINO GenAI's continuous batching on an "
            "OpenVINO GenAI folder; auto: the runtime's batching where the artifact has it.",
        ),
        _limit("--max-body-mb", click.FloatRange(min=0, min_open=True), 64.0, "Largest request body (413 above it)."),
        _limit(
            "--max-json-mb",
            click.FloatRange(min=0, min_open=True),
            16.0,
            "Largest JSON part of a request (413 above it; binary tensors do not count).",
        ),
        _limit("--max-json-depth", click.IntRange(min=4), 32, "Deepest nesting of a request's JSON (400 past it)."),
        _limit(
            "--max-header-kb",
            click.FloatRange(min=1),
            16.0,
            "Largest request line + headers (414 for a long URL, 431 for headers).",
        ),
        click.Option(
            ["--pubkey"], type=click.Path(path_type=Path), help="Check a bundle's Ed25519 signature with this key."
        ),
        *_archive_limits(),
    ],
    _serve_settings,
)


@main.command()
@click.argument(
    "artifacts",
    metavar="BUNDLE|build/<model>/<target-dir>...",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path),
)
@command
@_SERVE_SETTINGS
def serve(artifacts: tuple[Path, ...], settings: ServeSettings) -> None:
    """Serve an artifact over the Open Inference Protocol (KServe v2 REST, as Triton and OVMS speak
    it), with dynamic batching; a causal LM (or several: the request's model picks one) over the
    OpenAI-compatible API (/v1/completions, /v1/chat/completions, streaming). Prometheus metrics at
    /metrics."""
    from kiln.serve.server import serve as run_server

    run_server(artifacts, settings, say=lambda line: click.echo(line, err=True))
