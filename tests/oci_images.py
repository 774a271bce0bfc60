"""Tiny OCI image archives written by hand, for the template tests: the host's static
busybox in a base layer, and an upper layer that whites a file out and adds one (what
`docker save` of a two-layer image would give, as an OCI layout tarball)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "echo", "test", "mkdir")


def tar_layer(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """An uncompressed layer tarball: ``files`` (mode 0755), then ``symlinks``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o755
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def busybox_layers(
    whited_out: str = "secret.txt", extra_files: dict[str, bytes] | None = None
) -> list[bytes]:
    """A base layer with busybox (and applet links), ``etc/keep.txt``, ``etc/<whited_out>``
    and ``extra_files``; an upper one whiting ``etc/<whited_out>`` out and adding
    ``etc/added.txt``."""
    base = tar_layer(
        {
            "bin/busybox": BUSYBOX.read_bytes(),
            "etc/keep.txt": b"kept\n",
            f"etc/{whited_out}": b"whited out\n",
            **(extra_files or {}),
        },
        {f"bin/{applet}": "busybox" for applet in APPLETS},
    )
    upper = tar_layer({f"etc/.wh.{whited_out}": b"", "etc/added.txt": b"added\n"})
    return [base, upper]


def _blob(layout: dict[str, bytes], data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    layout[f"blobs/sha256/{digest}"] = data
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def oci_archive(layers: list[bytes], env: list[str], *, ref_name: str | None = "latest") -> bytes:
    """An OCI layout tarball of an image with ``layers`` (gzipped here) and ``env``; its
    one manifest is annotated with ``ref_name`` unless that is None."""
    layout: dict[str, bytes] = {}
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, "WorkingDir": "/"},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers],
        },
    }
    layer_blobs = [
        _blob(layout, gzip.compress(layer, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
        for layer in layers
    ]
    config_blob = _blob(
        layout, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
    )
    manifest = {"schemaVersion": 2, "config": config_blob, "layers": layer_blobs}
    manifest_blob = _blob(
        layout, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json"
    )
    if ref_name is not None:
        manifest_blob["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    layout["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [manifest_blob]}).encode()
    layout["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in layout.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_oci_archive(path: Path, layers: list[bytes], env: list[str]) -> str:
    """Writes ``oci_archive(layers, env)`` to ``path``; returns the file's sha256."""
    archive = oci_archive(layers, env)
    path.write_bytes(archive)
    return hashlib.sha256(archive).hexdigest()


def write_busybox_image(path: Path, whited_out: str = "secret.txt") -> Path:
    """Writes the busybox image (``busybox_layers(whited_out)``, ``PATH=/bin``) to ``path``."""
    path.write_bytes(oci_archive(busybox_layers(whited_out), ["PATH=/bin"]))
    return path
