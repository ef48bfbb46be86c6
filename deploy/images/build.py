#!/usr/bin/env python3
"""keygate's images as OCI image layouts, written without a container engine (`make images`).

- target/images/keygate-filter: the filter as Istio's Wasm image fetcher accepts it, the
  "compat" variant: an OCI image whose one (last) layer is a tar+gzip holding `plugin.wasm`,
  annotated `module.wasm.image/variant: compat`.
- target/images/keygate: the `keygate` binary (CLI, `serve`, `ratelimit`) with the C library it
  links, CA certificates and a non-root user; no shell, nothing else.
- target/images/keygate.wasm and keygate.wasm.sha256, for `url: https://…` with `sha256:`.

Reproducible: every timestamp is the commit's time (SOURCE_DATE_EPOCH), files are owned by
fixed ids and sorted, gzip writes no name or time; the same inputs give the same digests.
Only the standard library: run it with any Python 3.9+.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

USER = 65532  # the image's user and group (nonroot)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout directory: blobs by digest, index.json naming one tagged manifest."""

    def __init__(self, path: str):
        self.path = path
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        with open(os.path.join(path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes, media_type: str) -> dict:
        d = digest(data)
        with open(os.path.join(self.path, "blobs", "sha256", d.split(":")[1]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def finish(self, manifest: dict, tag: str) -> dict:
        desc = self.blob(canonical(manifest), "application/vnd.oci.image.manifest.v1+json")
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [desc]}
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canonical(index))
        return desc


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Tar:
    """A tar of fixed ownership and times, entries in the order given (callers sort)."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)
        self.dirs = set()

    def _info(self, name: str, mode: int, owner: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = mode, self.epoch
        info.uid = info.gid = owner
        info.uname = info.gname = ""
        return info

    def dir(self, name: str, mode: int = 0o755, owner: int = 0):
        parent = os.path.dirname(name)
        if parent and parent not in self.dirs:
            self.dir(parent)
        if name in self.dirs:
            return
        self.dirs.add(name)
        info = self._info(name, mode, owner)
        info.type = tarfile.DIRTYPE
        self.tar.addfile(info)

    def file(self, name: str, data: bytes, mode: int = 0o644):
        parent = os.path.dirname(name)
        if parent:
            self.dir(parent)
        info = self._info(name, mode, 0)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def layer(self, level: int = 9) -> tuple:
        """(the gzip-compressed tar, the uncompressed tar's digest: the config's diff_id)."""
        self.tar.close()
        raw = self.buf.getvalue()
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=level) as z:
            z.write(raw)
        return out.getvalue(), digest(raw)


def image(layout: Layout, layer: bytes, diff_id: str, config: dict, labels: dict, epoch: int,
          platform: tuple, annotations: dict, tag: str) -> dict:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    cfg = {
        "created": created,
        "architecture": platform[0],
        "os": platform[1],
        "config": dict(config, Labels=labels),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "deploy/images/build.py"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": layout.blob(canonical(cfg), "application/vnd.oci.image.config.v1+json"),
        "layers": [layout.blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
        "annotations": dict(labels, **annotations),
    }
    return layout.finish(manifest, tag)


def linked_libraries(binary: str) -> list:
    """The shared objects the dynamic loader maps for `binary` (ldd), as absolute paths."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            path = parts[parts.index("=>") + 1]
            if path.startswith("/"):
                libs.append(path)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the loader itself, at the path the binary names
    return sorted(set(libs))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wasm", required=True)
    p.add_argument("--keygate", required=True, help="the native keygate binary")
    p.add_argument("--out", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--revision", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--epoch", type=int, required=True, help="SOURCE_DATE_EPOCH: the commit's time")
    p.add_argument("--ca-certificates", default="/etc/ssl/certs/ca-certificates.crt")
    a = p.parse_args()

    labels = {
        "org.opencontainers.image.version": a.version,
        "org.opencontainers.image.revision": a.revision,
        "org.opencontainers.image.source": a.source,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(a.wasm, "rb") as f:
        wasm = f.read()

    # The filter: plugin.wasm alone, in the compat variant Istio reads.
    t = Tar(a.epoch)
    t.file("plugin.wasm", wasm)
    layer, diff_id = t.layer()
    filt = image(Layout(os.path.join(a.out, "keygate-filter")), layer, diff_id, {},
                 dict(labels, **{"org.opencontainers.image.title": "keygate-filter"}), a.epoch,
                 ("wasm", "wasip1"), {"module.wasm.image/variant": "compat"}, a.version)
    shutil.copyfile(a.wasm, os.path.join(a.out, "keygate.wasm"))
    with open(os.path.join(a.out, "keygate.wasm.sha256"), "w") as f:
        f.write(f"{hashlib.sha256(wasm).hexdigest()}  keygate.wasm\n")

    # The services: keygate, its C library, CA certificates, a user; no shell.
    t = Tar(a.epoch)
    t.dir("etc")
    t.file("etc/group", f"root:x:0:\nkeygate:x:{USER}:\n".encode())
    t.file("etc/nsswitch.conf", b"hosts: files dns\n")
    t.file("etc/passwd",
           f"root:x:0:0:root:/root:/sbin/nologin\n"
           f"keygate:x:{USER}:{USER}:keygate:/var/lib/keygate:/sbin/nologin\n".encode())
    with open(a.ca_certificates, "rb") as f:
        t.file("etc/ssl/certs/ca-certificates.crt", f.read())
    for lib in linked_libraries(a.keygate):
        with open(os.path.realpath(lib), "rb") as f:
            t.file(lib.lstrip("/"), f.read(), 0o755)
    t.dir("tmp", 0o1777)
    with open(a.keygate, "rb") as f:
        t.file("usr/local/bin/keygate", f.read(), 0o755)
    t.dir("var/lib/keygate", 0o750, USER)
    layer, diff_id = t.layer()
    config = {
        "User": f"{USER}:{USER}",
        "Entrypoint": ["/usr/local/bin/keygate"],
        "Cmd": ["--help"],
        "WorkingDir": "/var/lib/keygate",
        "Env": ["PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    }
    svc = image(Layout(os.path.join(a.out, "keygate")), layer, diff_id, config,
                dict(labels, **{"org.opencontainers.image.title": "keygate"}), a.epoch,
                ("amd64" if os.uname().machine == "x86_64" else os.uname().machine, "linux"),
                {}, a.version)

    for name, desc in [("keygate-filter", filt), ("keygate", svc)]:
        m = json.load(open(os.path.join(a.out, name, "blobs", "sha256", desc["digest"][7:])))
        size = sum(l["size"] for l in m["layers"])
        print(f"{a.out}/{name}:{a.version}  {desc['digest']}  layers {size} bytes compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
