#!/usr/bin/env python3
"""Build a small, deterministic OCI image layout for the real-tool scripts
(scripts/critest.sh, scripts/kubelet-e2e.sh) and copy it to a registry with
skopeo. Standard library only.

  make-image.py --dest 127.0.0.1:5000/repo:tag [--user U] [--seed N]
                [--busybox /bin/busybox] [--cmd a,b,...] [--entrypoint a,b]

With --busybox the image is runnable: /bin/busybox plus /bin/sh, /bin/sleep,
... links. Without it the image holds one small file (seeded, so different
seeds give different image IDs and one seed always the same ID).

Two layers, as real images have: a base (/etc, and busybox when asked) and
the image's own (/seed, and /etc/motd replacing a base file), so a pull runs
a snapshot chain: cri-imaged's staging of a layer ahead of its parent's
snapshot is on the path of every real-client test.
"""
import argparse, gzip, hashlib, io, json, os, subprocess, sys, tarfile, tempfile

APPLETS = ["sh", "sleep", "echo", "cat", "ls", "true", "id", "httpd", "nc", "wget"]


def tar_layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 0
            ti.uname = ti.gname = "root"
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, mode
                t.addfile(ti)
            elif kind == "symlink":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, data, 0o777
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(data), mode
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", required=True)
    ap.add_argument("--user", default="")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--busybox", default="")
    ap.add_argument("--cmd", default="/bin/sh")
    ap.add_argument("--entrypoint", default="")
    ap.add_argument("--creds", default="", help="user:pass for the registry")
    a = ap.parse_args()

    base = [("etc", "dir", None, 0o755),
            ("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n", 0o644),
            ("etc/group", "file", b"root:x:0:\nwww-data:x:33:\n", 0o644),
            ("etc/motd", "file", b"base\n", 0o644)]
    if a.busybox:
        base.append(("bin", "dir", None, 0o755))
        base.append(("bin/busybox", "file", open(a.busybox, "rb").read(), 0o755))
        base += [("bin/" + x, "symlink", "busybox", 0) for x in APPLETS]
        base.append(("tmp", "dir", None, 0o1777))
    own = [("etc/motd", "file", ("image %s\n" % a.seed).encode(), 0o644),
           ("seed", "file", ("seed %s\n" % a.seed).encode(), 0o644)]
    raws = [tar_layer(base), tar_layer(own)]
    gzs = [gzip.compress(raw, mtime=0) for raw in raws]
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": [c for c in a.cmd.split(",") if c]},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest() for raw in raws]},
    }
    if a.entrypoint:
        config["config"]["Entrypoint"] = a.entrypoint.split(",")
    if a.user:
        config["config"]["User"] = a.user
    cfg = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()

    def desc(mt, data):
        return {"mediaType": mt, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", cfg),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", gz) for gz in gzs],
    }, sort_keys=True, separators=(",", ":")).encode()
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "blobs", "sha256"))
        for data in gzs + [cfg, manifest]:
            with open(os.path.join(d, "blobs", "sha256", hashlib.sha256(data).hexdigest()), "wb") as f:
                f.write(data)
        with open(os.path.join(d, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        with open(os.path.join(d, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [
                dict(desc("application/vnd.oci.image.manifest.v1+json", manifest),
                     annotations={"org.opencontainers.image.ref.name": "x"})]}, f)
        cmd = ["skopeo", "copy", "-q", "--dest-tls-verify=false", "--preserve-digests"]
        if a.creds:
            cmd += ["--dest-creds", a.creds]
        cmd += ["oci:%s:x" % d, "docker://" + a.dest]
        subprocess.run(cmd, check=True)
    print("sha256:" + hashlib.sha256(manifest).hexdigest())


if __name__ == "__main__":
    sys.exit(main())
