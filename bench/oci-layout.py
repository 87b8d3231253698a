#!/usr/bin/env python3
"""Bench helper: write an OCI image layout (for umoci) from gzip layer tars, bottom first.

    oci-layout.py LAYOUT_DIR TAG LAYER.tar.gz...

blobs/sha256/<digest> holds the gzip layers as they are (hard-linked or copied), the config lists
the diff_ids (sha256 of the uncompressed tars), index.json names the manifest TAG.
"""
import gzip
import hashlib
import json
import os
import shutil
import sys


def sha256_file(path, opener=open):
    h = hashlib.sha256()
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    layout, tag, layers = sys.argv[1], sys.argv[2], sys.argv[3:]
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put_bytes(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return d, len(data)

    descs, diff_ids = [], []
    for path in layers:
        d = sha256_file(path)
        dst = os.path.join(blobs, d)
        if not os.path.exists(dst):
            try:
                os.link(path, dst)
            except OSError:
                shutil.copyfile(path, dst)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": "sha256:" + d, "size": os.path.getsize(path)})
        diff_ids.append("sha256:" + sha256_file(path, gzip.open))

    config = {
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"bench layer {i}"} for i in range(len(layers))],
    }
    cd, cs = put_bytes(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + cd, "size": cs},
        "layers": descs,
    }
    md, ms = put_bytes(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": "sha256:" + md, "size": ms,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)


if __name__ == "__main__":
    main()
