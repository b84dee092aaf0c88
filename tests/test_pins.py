"""Every pin the image installs has a wheel for the image's Python and platform.

For each rendered pin, `pip index versions --only-binary=:all: --python-version X.Y --platform ...`
lists the versions with a wheel the image's pip could install (its Python, manylinux tags up to
its glibc, Requires-Python honoured); the pinned version must be among them. Measured here
(2026-12-01): `pip install --dry-run --report` resolves the same question but downloads wheels
without index metadata (424 MB for nvidia-dali-cuda120); the index listing downloads none.
Needs the package index; skipped with the reason where it is unreachable.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts.render_dockerfile import BASE, REQUIREMENTS, NgcRelease, image_pins

pytestmark = pytest.mark.network

_UNREACHABLE = re.compile(
    r"(NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|ConnectTimeout|Max retries exceeded|ProxyError)"
)


def wheel_versions(name: str, base: NgcRelease) -> tuple[list[str], str]:
    """(versions of `name` with a wheel for `base`'s Python and platform, pip's stderr)."""
    platforms = [arg for tag in base.platforms for arg in ("--platform", tag)]
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "index", "versions", name, "--json"),
            *("--only-binary=:all:", "--python-version", base.python, *platforms),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    versions = json.loads(proc.stdout)["versions"] if proc.returncode == 0 else []
    return versions, proc.stderr


def missing(pins: list[str], base: NgcRelease) -> list[str]:
    """The pins that have no wheel for `base`; skips the test when the index is unreachable."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda pin: wheel_versions(pin.split("==")[0], base), pins))
    for _, stderr in found:
        if unreachable := _UNREACHABLE.search(stderr):
            pytest.skip(f"package index unreachable: {unreachable.group(0)}")
    return [
        pin
        for pin, (versions, _) in zip(pins, found, strict=True)
        if pin.split("==")[1] not in versions
    ]


def test_every_image_pin_has_a_wheel_for_the_images_python():
    pins = image_pins(REQUIREMENTS.read_text())
    lost = missing(pins, BASE)
    assert lost == [], f"no wheel for Python {BASE.python} on {BASE.tag}: {', '.join(lost)}"


def test_a_pin_without_a_wheel_is_named():
    # pillow 13 has no wheel for Python 3.9, pyyaml 6.0.2 has (the old image's kind of defect).
    old = NgcRelease("00.00", "20.04", "3.9", "12.6", "2.0", "7.0", "2.31")
    assert missing(["pyyaml==6.0.2", "pillow==13.0.0"], old) == ["pillow==13.0.0"]
