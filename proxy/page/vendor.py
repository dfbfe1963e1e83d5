"""``make vendor`` (``python -m proxy.page.vendor``): the page's third-party browser
code, fetched from the npm registry at the pinned versions below, with its licence.

No Node: each package's tarball is downloaded with urllib, checked against the
registry's ``dist.integrity`` (SHA-512, as npm itself checks it), and only the files
the page loads are taken out of it into ``static/vendor/``. MANIFEST.json records,
for each file, the package, version and SHA-256, so that a test (no network) can tell
that what is committed is what this script fetched. To update: change a version
here, run ``make vendor``, and look at the diff.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

VENDOR = Path(__file__).parent / "static" / "vendor"
MANIFEST = VENDOR / "MANIFEST.json"
REGISTRY = "https://registry.npmjs.org"
TIMEOUT = 60  # seconds per download


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    files: dict[str, str]  # path in the tarball (under package/) -> name in vendor/


PACKAGES = (
    Package("tus-js-client", "4.3.1", {"dist/tus.min.js": "tus.min.js", "LICENSE": "tus-js-client.LICENSE"}),
    # The light build: no subtitles, alternate audio or DRM, which the player has no use for.
    Package("hls.js", "1.7.4", {"dist/hls.light.min.js": "hls.light.min.js", "LICENSE": "hls.js.LICENSE"}),
)


def _get(url: str) -> bytes:
    if not url.startswith("https://"):
        raise ValueError(f"refusing a non-https URL: {url}")
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # https only, checked above
        data: bytes = answer.read()
    return data


def _check_integrity(data: bytes, integrity: str) -> None:
    """``integrity`` is Subresource Integrity text: ``sha512-<base64>`` (maybe several)."""
    for item in integrity.split():
        algorithm, _, digest = item.partition("-")
        if algorithm == "sha512":
            if base64.b64encode(hashlib.sha512(data).digest()).decode() != digest:
                raise ValueError("the tarball does not match the registry's sha512 integrity")
            return
    raise ValueError(f"no sha512 in the registry's integrity {integrity!r}")


def fetch(package: Package) -> dict[str, bytes]:
    """The package's wanted files, by their name in vendor/, from a checked tarball."""
    meta = json.loads(_get(f"{REGISTRY}/{quote(package.name, safe='')}/{package.version}"))
    tarball = _get(meta["dist"]["tarball"])
    _check_integrity(tarball, meta["dist"]["integrity"])
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for inner, name in package.files.items():
            member = tar.extractfile(f"package/{inner}")
            if member is None:
                raise ValueError(f"{package.name}@{package.version} has no {inner}")
            out[name] = member.read()
    return out


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    VENDOR.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, str]] = {}
    for package in PACKAGES:
        for name, data in fetch(package).items():
            (VENDOR / name).write_bytes(data)
            manifest[name] = {
                "package": package.name,
                "version": package.version,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            print(f"{name}: {package.name}@{package.version}, {len(data)} bytes")
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
