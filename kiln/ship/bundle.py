"""``kiln package``: one reproducible, optionally signed release bundle per artifact.

Reproducible means the bytes depend on the artifact alone: entries sorted, every mtime the
``SOURCE_DATE_EPOCH`` (else the manifest's ``created``), uid/gid 0 with empty owner names, fixed
modes (0644 files, 0755 folders), PAX headers, and a gzip header with mtime 0 and no file name.
A bundle whose bytes would not change is not rewritten (its mtime stays, so ``make`` does no work).

What is refused, before anything is written (a missing or unreadable signing key too; and then
the bundle and its ``.sig`` are renamed into place only once both are complete): an artifact whose gate failed (exit 3, with the
breach), one whose gate did not run here unless ``--allow-ungated`` (exit 5; the model card then
says in its first lines that it is not gated), one built before kiln wrote golden sets, and an
artifact folder whose files no longer match its manifest (exit 7: rebuild it).
"""

from __future__ import annotations

import calendar
import gzip
import io
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kiln.errors import ConfigError, IntegrityError, ParityError, UnavailableError
from kiln.manifest import MANIFEST_SCHEMA, Manifest
from kiln.results import Results
from kiln.ship import CARD, SUFFIX, SUMS
from kiln.ship.card import model_card
from kiln.ship.files import make_dirs, remove_made, temp_beside, write_temp
from kiln.ship.keys import load_private_key, signature_bytes, signature_path
from kiln.store import MANIFEST, sha256_file

RESULTS = "results.json"
FILE_MODE, DIR_MODE = 0o644, 0o755


@dataclass(frozen=True)
class PackageOptions:
    out: Path = Path("dist")
    sign: Path | None = None  # an Ed25519 private key (PEM)
    allow_ungated: bool = False  # ship an artifact whose gate did not run here


@dataclass(frozen=True)
class Packaged:
    bundle: Path
    signature: Path | None
    changed: bool  # False: the bundle on disk already had these bytes
    manifest: Manifest


def bundle_name(manifest: Manifest) -> str:
    """``<model>-<target>-<precision>[-<prune>]``: the bundle's stem and its folder's name."""
    return f"{manifest.model}-{manifest.key}"


def check_shippable(manifest: Manifest, folder: Path, allow_ungated: bool) -> None:
    """Refuse what must not ship: a failed or (without ``allow_ungated``) unrun gate, a manifest
    from before golden sets."""
    what = f"{folder} ({manifest.target}:{manifest.precision})"
    gate = manifest.gate
    if gate.passed is False:
        raise ParityError(f"{what} failed its gate: {'; '.join(gate.breaches) or 'see manifest.json'}; not packaged")
    if gate.passed is None and not allow_ungated:
        raise UnavailableError(
            f"{what} was built but its gate did not run ({gate.reason}); build it where it runs, "
            "or pass --allow-ungated to ship it unproven (its model card says so)"
        )
    if manifest.golden is None or manifest.schema_id != MANIFEST_SCHEMA:
        raise ConfigError(
            f"{what} was built by an older kiln (manifest schema {manifest.schema_id}, no golden set); "
            "run kiln build again to rebuild it"
        )


def check_files(manifest: Manifest, folder: Path) -> None:
    """Every file the manifest lists is in the folder with its recorded digest."""
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file() or path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise IntegrityError(
                f"{path} is missing or changed since kiln build wrote {folder / MANIFEST}; run kiln build again"
            )
        if "\n" in entry.path or "\\" in entry.path:
            raise ConfigError(f"{path}: a file name with a newline or backslash cannot be listed in {SUMS}; rename it")


def source_date(manifest: Manifest) -> int:
    """Every entry's mtime: ``SOURCE_DATE_EPOCH`` when set (reproducible-builds.org), else the
    manifest's ``created``."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        if not env.strip().isdigit():
            raise ConfigError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number of seconds; set it or unset it")
        return int(env)
    return calendar.timegm(time.strptime(manifest.created, "%Y-%m-%dT%H:%M:%SZ"))


def _results(folder: Path, manifest: Manifest) -> tuple[Results | None, str | None]:
    """The model's latest benchmark, when ``results.json`` is beside the artifact and measured it
    after this build; else why not (a line in the card, never a failure)."""
    from kiln.errors import KilnError
    from kiln.report import load_results

    path = folder.parent / RESULTS
    if not path.is_file():
        return None, None
    try:
        results = load_results(path)
    except KilnError as err:
        return None, f"{RESULTS} beside the artifact could not be read ({err})"
    if results.created < manifest.created:
        return (
            None,
            f"{RESULTS} was measured before this build ({results.created} < {manifest.created}); run kiln bench",
        )
    if not any(c.key == manifest.key for c in results.cells):
        return None, f"{RESULTS} has no cell for {manifest.key}"
    return results, None


def package(folder: Path, options: PackageOptions) -> Packaged:
    """Write ``<out>/<model>-<key>.tar.gz`` for one artifact folder (and its ``.sig`` with a key)."""
    return package_all([folder], options)[0]


def package_all(folders: list[Path], options: PackageOptions) -> list[Packaged]:
    """A bundle per artifact folder. Everything that can be refused (each artifact, ``-o``, the
    signing key) is refused before a byte is written; each bundle and its signature are written
    under temporary names and renamed into place at the end, so a failure leaves ``-o`` as it was."""
    manifests = []
    for folder in folders:
        manifest = Manifest.read(folder)
        check_shippable(manifest, folder, options.allow_ungated)
        check_files(manifest, folder)
        manifests.append(manifest)
    if options.out.exists() and not options.out.is_dir():
        raise ConfigError(f"-o {options.out} is a file, not a folder; choose another -o or remove the file")
    key = load_private_key(options.sign) if options.sign is not None else None
    made = make_dirs(options.out)
    try:
        return [
            _write_bundle(folder, manifest, options.out, key)
            for folder, manifest in zip(folders, manifests, strict=True)
        ]
    except BaseException:
        remove_made(made)
        raise


def _write_bundle(folder: Path, manifest: Manifest, out: Path, key: Any) -> Packaged:
    name = bundle_name(manifest)
    results, note = _results(folder, manifest)
    card = model_card(manifest, results, note).encode()
    manifest_bytes = (folder / MANIFEST).read_bytes()
    digests = {e.path: e.sha256 for e in manifest.files}
    digests[MANIFEST] = sha256_file(folder / MANIFEST)
    digests[CARD] = _sha256(card)
    sums = "".join(f"{digests[p]}  {p}\n" for p in sorted(digests, key=lambda p: PurePosixPath(p).parts)).encode()
    members: dict[str, Path | bytes] = {e.path: folder / e.path for e in manifest.files}
    members.update({MANIFEST: manifest_bytes, CARD: card, SUMS: sums})
    bundle = out / f"{name}{SUFFIX}"
    signature = signature_path(bundle)
    tmp, tmp_sig = temp_beside(bundle), None
    try:
        _tarball(name, members, source_date(manifest), tmp)
        changed = not (bundle.is_file() and sha256_file(bundle) == sha256_file(tmp))
        if key is not None:
            tmp_sig = write_temp(signature, signature_bytes(key, tmp), 0o644)
        _put_in_place(tmp if changed else None, bundle, tmp_sig, signature)
    finally:
        tmp.unlink(missing_ok=True)
        if tmp_sig is not None:
            tmp_sig.unlink(missing_ok=True)
    return Packaged(bundle, signature if key is not None else None, changed, manifest)


def _put_in_place(tmp: Path | None, bundle: Path, tmp_sig: Path | None, signature: Path) -> None:
    """Rename the new bundle (``tmp``; None: unchanged) and its new signature into place, together:
    if the second rename fails, the old bundle is put back. (Killed between the two, the old .sig
    does not verify the new bundle and ``verify --pubkey`` refuses it: never a wrong pass.)"""
    backup = None
    if tmp is not None and tmp_sig is not None and bundle.is_file():
        backup = temp_beside(bundle)
        os.link(bundle, backup)  # the old bytes under a second name, for a rollback
    try:
        if tmp is not None:
            os.replace(tmp, bundle)
        if tmp_sig is not None:
            os.replace(tmp_sig, signature)
        elif tmp is not None:
            signature.unlink(missing_ok=True)  # a signature of the old bytes
    except BaseException:
        if backup is not None:
            os.replace(backup, bundle)
        raise
    finally:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _tarball(top: str, members: dict[str, Path | bytes], mtime: int, dest: Path) -> None:
    """Write the gzipped tar of ``members`` under the folder ``top``: the same bytes every time."""
    folders = {PurePosixPath(top)}
    for rel in members:
        folders.update(PurePosixPath(top, rel).parents)
    folders.discard(PurePosixPath("."))
    entries = [(p, None) for p in folders] + [(PurePosixPath(top, rel), src) for rel, src in members.items()]
    with (
        dest.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, src in sorted(entries, key=lambda e: e[0].parts):
            info = tarfile.TarInfo(str(path))
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if src is None:
                info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
                tar.addfile(info)
                continue
            info.mode = FILE_MODE
            if isinstance(src, bytes):
                info.size = len(src)
                tar.addfile(info, io.BytesIO(src))
            else:
                info.size = src.stat().st_size
                with src.open("rb") as f:
                    tar.addfile(info, f)
