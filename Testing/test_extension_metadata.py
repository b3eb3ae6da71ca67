"""The extension's catalog entry (top-level CMakeLists.txt): dependencies and the screenshot."""

from __future__ import annotations

import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_extension_declares_pytorch_and_has_its_screenshot():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    depends = re.search(r'set\(EXTENSION_DEPENDS\s+"([^"]*)"\)', top).group(1).split()
    assert "PyTorch" in depends  # the Extensions Manager then installs PyTorchUtils
    urls = re.search(r'set\(EXTENSION_SCREENSHOTURLS\s+"([^"]*)"\)', top).group(1).split()
    assert urls
    repository = re.search(r'set\(EXTENSION_REPOSITORY\s+"([^"]*)"\)', top).group(1)
    for url in urls:
        prefix = "${EXTENSION_REPOSITORY}/raw/main/"
        assert url.startswith(prefix), url
        shot = ROOT / url[len(prefix):]
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", shot
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 800 and height >= 300, (width, height)
        assert shot.name in (ROOT / "README.md").read_text(encoding="utf-8")
    assert repository.startswith("https://github.com/")
