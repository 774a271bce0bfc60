"""A tiny OCI image archive for end-to-end tests: the host's static busybox in a base layer,
and an upper layer that whites a file out and adds one (what `docker save` would give)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def _layer(files: dict[str, bytes], symlinks: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o755
            tar.addfile(info, io.BytesIO(content))
        for name, target in symlinks.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def _blob(layout: dict[str, bytes], data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    layout[f"blobs/sha256/{digest}"] = data
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write_busybox_image(path: Path) -> Path:
    """An OCI layout tarball: busybox and two files, then a layer whiting one of them out."""
    applets = ("sh", "cat", "ls", "echo", "test", "mkdir")
    base = _layer(
        {"bin/busybox": Path("/bin/busybox").read_bytes(), "etc/keep.txt": b"kept\n",
         "etc/gone.txt": b"whited out\n"},
        {f"bin/{applet}": "busybox" for applet in applets},
    )  # fmt: skip
    upper = _layer({"etc/.wh.gone.txt": b"", "etc/added.txt": b"added\n"}, {})
    layout: dict[str, bytes] = {}
    layers = [base, upper]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "config": _blob(
            layout, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
        ),
        "layers": [
            _blob(
                layout, gzip.compress(layer, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
            )
            for layer in layers
        ],
    }
    entry = _blob(
        layout, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json"
    )
    entry["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    layout["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    layout["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    with tarfile.open(path, "w") as tar:
        for name, content in layout.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path
