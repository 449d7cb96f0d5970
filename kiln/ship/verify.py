"""``kiln verify``: on the machine that will run an artifact, prove that the bundle arrived intact,
that this machine can run it, and (``--run``) that it still computes what the gate accepted.

In order, each failure one line with its exit code:

1. the signature, with ``--pubkey``: ``<bundle>.sig`` over the bundle's SHA-256 (exit 7; checked
   before a byte is extracted);
2. every member header judged before a byte is written, and every byte counted as it is written
   (:mod:`kiln.ship.archive`: limits on members, sizes and compression ratio; no absolute path,
   ``..``, link, device, or name that does not fit the filesystem; exit 7), into a temporary
   folder renamed to a new ``<into>/<bundle folder>`` only once everything below passed;
3. every checksum in ``SHA256SUMS``, no file it does not list, the manifest valid against this
   kiln's schema and its ``files`` agreeing with the sums (exit 7; another schema: exit 5);
4. the runtime and hardware (:mod:`kiln.ship.compat`, exit 5);
5. ``--run``: the artifact loaded with its runtime replays ``golden/`` under the gate's own
   tolerance; each breach is one line (exit 3).

An artifact folder (``build/<model>/<target-dir>``) is verified the same way from step 3, with its
manifest's file list in place of ``SHA256SUMS`` (a file it does not list is refused, as in a bundle).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from kiln import __version__
from kiln.errors import (
    CompatibilityError,
    ConfigError,
    IntegrityError,
    ParityError,
    UnsafeBundleError,
    error_line,
    one_line,
)
from kiln.manifest import MANIFEST_SCHEMA, Manifest
from kiln.ship import SUMS
from kiln.ship.archive import DEFAULT_LIMITS, Limits, extract
from kiln.store import MANIFEST, sha256_file

SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


@dataclass
class Verified:
    """What ``kiln verify`` established: the artifact folder, its manifest, one line per check,
    and the golden set's breaches (``--run``; empty: it reproduces what the gate accepted)."""

    folder: Path
    manifest: Manifest
    checks: list[str] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)


def extract_verified(bundle: Path, into: Path, pubkey: Path | None = None, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Check the signature (with ``pubkey``), extract the bundle safely into a new folder
    ``into/<bundle folder>`` and check every checksum and the manifest; returns the artifact
    folder."""
    return _extract(bundle, into, pubkey, limits).folder


def _extract(
    bundle: Path, into: Path, pubkey: Path | None, limits: Limits, then: Callable[[Verified], None] | None = None
) -> Verified:
    """Steps 1 to 3, then ``then`` on the unpacked folder (steps 4 and 5); the folder is renamed
    into place only when each passed (no exception, no golden breach)."""
    if not bundle.is_file():
        raise ConfigError(f"{bundle} is not a file; pass a bundle kiln package wrote (or an artifact folder)")
    checks = []
    if pubkey is not None:
        from kiln.ship.keys import verify_signature

        verify_signature(bundle, pubkey)
        checks.append(f"signature: Ed25519, verified with {pubkey.name}")
    with extract(bundle, into, limits) as unpacked:
        manifest, count = check_sums(unpacked.folder, bundle)
        checks.append(f"contents: {count} files match {SUMS}; manifest {manifest.schema_id} valid")
        verified = Verified(unpacked.folder, manifest, checks)
        if then is not None:
            then(verified)
        if not verified.breaches:
            verified.folder = unpacked.commit()
    return verified


def check_sums(folder: Path, bundle: Path) -> tuple[Manifest, int]:
    """Every file listed in SHA256SUMS has its digest, every file is listed, and the manifest is
    valid and agrees with the sums."""
    sums_path = folder / SUMS
    if not sums_path.is_file():
        raise IntegrityError(f"{bundle} has no {SUMS}; it was not written by kiln package")
    try:
        text = sums_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise IntegrityError(
            f"{bundle}: {SUMS} is not UTF-8 text (byte {err.start}); kiln package writes UTF-8: fetch the bundle again"
        ) from err
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        found = SUM_LINE.match(line)
        if found is None:
            raise IntegrityError(f"{bundle}: {SUMS} line {number} is not '<sha256>  <path>': {line[:80]!r}")
        digest, rel = found.groups()
        if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
            raise UnsafeBundleError(f"{bundle}: {SUMS} names {rel!r}, outside the bundle")
        listed[rel] = digest
    present = files_in(folder)
    for rel, digest in listed.items():
        if rel not in present:  # never a stat of a name the bundle chose: it may not fit the filesystem
            raise IntegrityError(f"{bundle}: {one_line(rel)} is listed in {SUMS} but missing; fetch the bundle again")
        if sha256_file(present[rel]) != digest:
            raise IntegrityError(
                f"{bundle}: {one_line(rel)} does not match its checksum in {SUMS}; the bundle was changed"
            )
    check_unlisted(present, {*listed, SUMS}, f"{bundle}: ", f"{SUMS}; the bundle was changed after packaging")
    manifest = read_manifest(folder, bundle)
    for entry in manifest.files:
        if listed.get(entry.path) != entry.sha256:
            raise IntegrityError(
                f"{bundle}: {one_line(entry.path)} differs from what {MANIFEST} records; the bundle was changed"
            )
    return manifest, len(listed)


def files_in(folder: Path) -> dict[str, Path]:
    """Every regular file under ``folder``, by its POSIX path relative to it."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def check_unlisted(present: dict[str, Path], listed: set[str], where: str, why: str) -> None:
    """No file but those ``listed``: what is not is refused (``<where><file> is not listed in <why>``)."""
    for rel in present:
        if rel not in listed:
            raise IntegrityError(f"{where}{one_line(rel)} is not listed in {why}")


def read_manifest(folder: Path, where: Path) -> Manifest:
    """The manifest, validated against this kiln's schema (another schema: exit 5)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: arrays nested thousands deep
        raise IntegrityError(f"{where}: {MANIFEST} is missing or not JSON ({error_line(err, typed=False)})") from err
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != MANIFEST_SCHEMA:
        made = data.get("kiln_version", "?") if isinstance(data, dict) else "?"
        raise CompatibilityError(
            f"{where}: the manifest's schema is {schema!r} and this kiln ({__version__}) reads {MANIFEST_SCHEMA!r}; "
            f"verify it with the kiln that made it ({made}), or rebuild and package it with this one"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        at = one_line(".".join(str(p) for p in first["loc"]))
        raise IntegrityError(f"{where}: {MANIFEST} does not validate ({at}: {one_line(first['msg'], 200)})") from err
    if manifest.golden is None:
        raise ConfigError(f"{where}: the artifact has no golden set; rebuild it with this kiln and package it again")
    if manifest.gate.passed is False:
        raise ParityError(f"{where}: the artifact failed its gate: {one_line('; '.join(manifest.gate.breaches), 400)}")
    return manifest


def verify(
    path: Path,
    into: Path,
    run: bool = False,
    pubkey: Path | None = None,
    threads: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Verified:
    """Verify a bundle (extracted into ``into``) or an artifact folder; see the module's docstring."""
    if path.is_dir():
        if pubkey is not None:
            raise ConfigError(f"{path} is a folder: a signature covers a bundle; pass the .tar.gz with --pubkey")
        from kiln.ship.bundle import check_files

        manifest = read_manifest(path, path)
        check_files(manifest, path)
        listed = {MANIFEST, *(entry.path for entry in manifest.files)}
        check_unlisted(files_in(path), listed, f"{path}/", f"{MANIFEST} (a bundle would be refused for it); remove it")
        verified = Verified(path, manifest, [f"contents: {len(manifest.files)} files match {MANIFEST}"])
        _runs_here(verified, run, threads)
        return verified
    return _extract(path, into, pubkey, limits, lambda verified: _runs_here(verified, run, threads))


def _runs_here(verified: Verified, run: bool, threads: int | None) -> None:
    """Steps 4 and 5: this machine's runtime and hardware, and with ``run`` the golden set."""
    from kiln.ship.compat import check_runs_here

    verified.checks += check_runs_here(verified.manifest)
    if run:
        verified.breaches = run_golden(verified.folder, verified.manifest, threads)
        if not verified.breaches:
            golden = verified.manifest.golden
            assert golden is not None
            verified.checks.append(f"golden: {golden.cases} cases within the gate's tolerance on this machine")


def run_golden(folder: Path, manifest: Manifest, threads: int | None = None) -> list[str]:
    """Load the artifact with its runtime and replay its golden set: the breaches, one line each."""
    from kiln.gate import golden
    from kiln.targets.base import RunOptions
    from kiln.targets.opening import open_runner

    assert manifest.golden is not None
    with open_runner(folder, RunOptions(threads=threads), manifest) as runner:
        return golden.check(folder, manifest.signature, manifest.golden, runner).breaches
