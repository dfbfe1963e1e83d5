"""The vendored browser code (proxy/page/vendor.py): what MANIFEST.json records is what
is committed, with a licence for each package, at the pinned versions. No network:
``make vendor`` is what fetches."""

from __future__ import annotations

import hashlib
import json

from proxy.page.vendor import MANIFEST, PACKAGES, VENDOR


def test_recorded_hashes_match_the_files() -> None:
    manifest = json.loads(MANIFEST.read_text())
    on_disk = {p.name for p in VENDOR.iterdir() if p != MANIFEST}
    assert set(manifest) == on_disk
    for name, entry in manifest.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == entry["sha256"], name


def test_every_pinned_file_is_recorded_with_its_version() -> None:
    manifest = json.loads(MANIFEST.read_text())
    for package in PACKAGES:
        assert any(name.endswith("LICENSE") for name in package.files.values()), package.name
        for name in package.files.values():
            assert (manifest[name]["package"], manifest[name]["version"]) == (package.name, package.version)
