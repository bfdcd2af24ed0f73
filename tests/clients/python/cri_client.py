#!/usr/bin/env python3
"""A CRI image client on gRPC C-core (Python grpcio), the other client class
cri-imaged must accept besides grpc-go.

grpcio dialing ``unix:///path`` sends the percent-encoded socket path as the
HTTP/2 :authority. Stubs are generated from proto/api.proto by
scripts/build-test-clients.sh into the directory given by --stubs.

Exit status 0 only when every check passed; one line per check.
"""
import argparse
import base64
import json
import sys

failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stubs", required=True)
    ap.add_argument("--endpoint", required=True, help="unix:///path/to/socket")
    ap.add_argument("--image", required=True, help="tagged ref needing credentials")
    ap.add_argument("--image2", required=True, help="second tagged ref, same registry")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    a = ap.parse_args()
    sys.path.insert(0, a.stubs)
    import grpc
    import api_pb2 as cri
    import api_pb2_grpc as cri_grpc

    ch = grpc.insecure_channel(a.endpoint)
    c = cri_grpc.ImageServiceStub(ch)
    T = 120

    fs = c.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=T)
    check(len(fs.image_filesystems) == 1 and fs.image_filesystems[0].fs_id.mountpoint != "",
          "ImageFsInfo mountpoint %r" % fs.image_filesystems[0].fs_id.mountpoint)

    spec = cri.ImageSpec(image=a.image)
    st = c.ImageStatus(cri.ImageStatusRequest(image=spec), timeout=T)
    check(not st.HasField("image"), "ImageStatus before pull is empty")

    try:
        c.PullImage(cri.PullImageRequest(image=spec), timeout=T)
        check(False, "PullImage without credentials must fail")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNAUTHENTICATED,
              "PullImage without credentials: %s" % e.code())

    creds = cri.AuthConfig(username=a.user, password=a.password)
    try:
        c.PullImage(cri.PullImageRequest(image=spec, auth=creds), timeout=0.001)
        check(False, "PullImage with a 1ms deadline must fail")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED,
              "PullImage with a 1ms deadline: %s" % e.code())

    r = c.PullImage(cri.PullImageRequest(image=spec, auth=creds), timeout=T)
    check(r.image_ref.startswith("sha256:"), "PullImage username/password: %s" % r.image_ref)
    image_id = r.image_ref

    b64 = base64.b64encode(("%s:%s" % (a.user, a.password)).encode()).decode()
    r2 = c.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=a.image2),
                                          auth=cri.AuthConfig(auth=b64)), timeout=T)
    check(r2.image_ref.startswith("sha256:") and r2.image_ref != image_id,
          "PullImage base64 auth: %s" % r2.image_ref)

    st = c.ImageStatus(cri.ImageStatusRequest(image=spec, verbose=True), timeout=T)
    check(st.image.id == image_id and st.image.size > 0 and list(st.image.repo_tags) == [a.image],
          "ImageStatus verbose: id=%s size=%d tags=%s" % (st.image.id, st.image.size, list(st.image.repo_tags)))
    info = json.loads(st.info["info"])
    check(info.get("chainID", "").startswith("sha256:") and "config" in info.get("imageSpec", {}),
          "ImageStatus verbose info has chainID and imageSpec")
    by_short = c.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=image_id[7:19])), timeout=T)
    check(by_short.image.id == image_id, "ImageStatus by short ID")

    everything = c.ListImages(cri.ListImagesRequest(), timeout=T)
    ids = {i.id for i in everything.images}
    check(image_id in ids and r2.image_ref in ids, "ListImages lists both images (%d)" % len(ids))
    only = c.ListImages(cri.ListImagesRequest(filter=cri.ImageFilter(image=spec)), timeout=T)
    check([i.id for i in only.images] == [image_id], "ListImages filtered to one image")
    none = c.ListImages(cri.ListImagesRequest(filter=cri.ImageFilter(
        image=cri.ImageSpec(image=a.image + "-absent"))), timeout=T)
    check(len(none.images) == 0, "ListImages filtered to an absent image is empty")

    for ref in (a.image, a.image2):
        c.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)), timeout=T)
    st = c.ImageStatus(cri.ImageStatusRequest(image=spec), timeout=T)
    check(not st.HasField("image"), "ImageStatus after RemoveImage is empty")
    c.RemoveImage(cri.RemoveImageRequest(image=spec), timeout=T)
    check(True, "RemoveImage of an absent image succeeds")

    try:
        c.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="Not//A:Ref")), timeout=T)
        check(False, "ImageStatus of an invalid reference must fail")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT,
              "ImageStatus of an invalid reference: %s" % e.code())

    print("python client: %s" % ("all checks passed" if failures == 0 else "%d check(s) failed" % failures))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # an RPC that should have worked: print it, fail
        print("FAIL unexpected error: %r" % (e,))
        sys.exit(1)
