"""Manifests of exports, read from where the server wrote them, and the checks of
:meth:`pitlake.Client.reproduce` that run on the client.

The server writes an export and its manifest (``<to>.manifest.json``) to a path or URL of its
own; the client reads the manifest back with ``pyarrow.fs`` from the same place, so the
location must be one both reach: an absolute path on a shared disk (or the same machine), or
an object-store URL the client has credentials for (pass a configured ``filesystem``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import pyarrow.fs as pafs

from .errors import InvalidArgument, NotFound, Unavailable

Manifest = Dict[str, Any]

#: The manifest format this client understands (`manifest_version`).
MANIFEST_VERSION = 1

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def manifest_location(to: str) -> str:
    """Where the server puts the manifest of an export written to ``to``."""
    return to.rstrip("/") + ".manifest.json"


def check_location(to: str) -> None:
    """Refuses a relative local path: the server would resolve it against its own working
    directory, which the client does not know (and could not read the manifest from)."""
    if not isinstance(to, str) or to == "":
        raise InvalidArgument(f"an export location is a path or URL, not {to!r}")
    if not _URL.match(to) and not os.path.isabs(to):
        raise InvalidArgument(
            f"export to an absolute path or a URL, not {to!r}: the server resolves a relative "
            "path against its own working directory, and this client reads the manifest back "
            "from the same place"
        )


def _filesystem(
    location: str, filesystem: Optional[pafs.FileSystem]
) -> Tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        path = location
        if _URL.match(location):
            path = location.split("://", 1)[1]
        return filesystem, path
    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as e:
        raise InvalidArgument(
            f"cannot open {location} from this client ({e}); pass a pyarrow filesystem "
            "that reaches it (filesystem=…)"
        ) from e
    return fs, path


def read_bytes(location: str, filesystem: Optional[pafs.FileSystem] = None) -> bytes:
    """The bytes of a file the server wrote."""
    fs, path = _filesystem(location, filesystem)
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError as e:
        raise NotFound(f"{location} does not exist (as seen from this client)") from e
    except OSError as e:
        raise Unavailable(f"cannot read {location} from this client: {e}") from e
    return bytes(data)


def _digest(location: str, filesystem: Optional[pafs.FileSystem]) -> Tuple[int, str]:
    """The size and SHA-256 of a file, read in pieces."""
    fs, path = _filesystem(location, filesystem)
    digest = hashlib.sha256()
    size = 0
    try:
        with fs.open_input_stream(path) as f:
            while True:
                piece = f.read(8 << 20)
                if not piece:
                    break
                digest.update(piece)
                size += len(piece)
    except FileNotFoundError as e:
        raise NotFound(f"{location} does not exist (as seen from this client)") from e
    except OSError as e:
        raise Unavailable(f"cannot read {location} from this client: {e}") from e
    return size, digest.hexdigest()


def read_manifest(location: str, filesystem: Optional[pafs.FileSystem] = None) -> Manifest:
    """A manifest, read from its location."""
    text = read_bytes(location, filesystem)
    try:
        manifest: Manifest = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{location} is not a pitlake manifest: {e}") from e
    check_manifest(manifest, location)
    return manifest


def check_manifest(manifest: Any, where: str = "the manifest") -> None:
    """Refuses what is not a manifest of the version this client reads."""
    if not isinstance(manifest, dict):
        raise InvalidArgument(f"{where} is not a pitlake manifest (a JSON object)")
    version = manifest.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise InvalidArgument(
            f"{where} has manifest_version {version!r}; this client reads version "
            f"{MANIFEST_VERSION}"
        )
    output = manifest.get("output")
    if not isinstance(manifest.get("query"), str) or not isinstance(output, dict):
        raise InvalidArgument(f"{where} has no pinned query or no output")
    if not isinstance(output.get("content_hash"), str):
        raise InvalidArgument(f"{where} records no content hash of its output")


def load(
    manifest: Union[Manifest, str, "os.PathLike[str]"], filesystem: Optional[pafs.FileSystem]
) -> Manifest:
    """A manifest given as a dict, or as the path or URL of its file."""
    if isinstance(manifest, dict):
        check_manifest(manifest)
        return manifest
    if isinstance(manifest, os.PathLike):
        manifest = os.fspath(manifest)
    if isinstance(manifest, str):
        return read_manifest(manifest, filesystem)
    raise InvalidArgument(
        f"a manifest is a dict or the path of its file, not {type(manifest).__name__}"
    )


def output_differences(
    manifest: Manifest, filesystem: Optional[pafs.FileSystem]
) -> Tuple[List[str], List[str]]:
    """What differs between an export's file and its manifest (size, SHA-256), and what could
    not be checked here, each as sentences."""
    output = manifest["output"]
    url = output.get("url", "")
    fmt = output.get("format")
    if fmt == "delta":
        return [], [
            f"the Delta table at {url} is not read by this client; `pitlake verify` checks it"
        ]
    expected_bytes = output.get("bytes")
    expected_sha = output.get("sha256")
    if expected_bytes is None or expected_sha is None:
        return [], [
            f"the manifest records no size or SHA-256 of {url} (written by an older pitlake); "
            "`pitlake verify` checks its rows"
        ]
    try:
        size, sha = _digest(url, filesystem)
    except NotFound:
        return [f"file: the export at {url} is missing"], []
    differences = []
    if size != expected_bytes:
        differences.append(
            f"size: the manifest records {expected_bytes} bytes, the export has {size} bytes"
        )
    if sha != expected_sha:
        differences.append(f"sha256: the manifest records {expected_sha}, the export has {sha}")
    return differences, []


def report_hash(report: str) -> Optional[str]:
    """The content hash in the server's one-line report of an export."""
    found = re.search(r"\((rows\d+:sha256sum:[0-9a-f]{64})\)", report)
    return found.group(1) if found else None


def report_manifest(report: str) -> Optional[str]:
    """The manifest location in the server's one-line report of an export."""
    found = re.search(r"; manifest (.+)$", report.strip())
    return found.group(1) if found else None


__all__ = [
    "MANIFEST_VERSION",
    "Manifest",
    "check_location",
    "load",
    "manifest_location",
    "output_differences",
    "read_manifest",
]
