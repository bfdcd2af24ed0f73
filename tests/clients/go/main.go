// cri-goclient: a CRI image client in the class of kubelet and crictl.
//
// It dials the socket exactly as kubelet's remote image service does
// (pkg/kubelet/cri/remote/remote_image.go with util.GetAddressAndDialer): the
// target is the plain socket path, a context dialer opens the unix socket,
// transport security is off, every call has its own timeout, and the
// connection is first validated with ImageFsInfo. grpc-go then sends the
// socket path as the HTTP/2 :authority, which is what this client proves the
// server accepts.
//
// Built from Debian's Go packages only (golang-google-grpc-dev,
// golang-github-golang-protobuf-1-5-dev, protoc-gen-go, protoc-gen-go-grpc); see
// scripts/build-test-clients.sh. Exit status 0 only when every check passed.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var failures int

func check(ok bool, format string, args ...interface{}) {
	if ok {
		fmt.Printf("ok   %s\n", fmt.Sprintf(format, args...))
	} else {
		failures++
		fmt.Printf("FAIL %s\n", fmt.Sprintf(format, args...))
	}
}

func main() {
	endpoint := flag.String("endpoint", "", "unix:///path/to/cri-imaged.sock")
	image := flag.String("image", "", "tagged reference in a registry that needs credentials")
	user := flag.String("user", "", "registry user")
	pass := flag.String("pass", "", "registry password")
	timeout := flag.Duration("timeout", 2*time.Minute, "per-call timeout")
	validateOnly := flag.Bool("validate-only", false, "only dial and call ImageFsInfo (kubelet's start-up check)")
	pullOnly := flag.String("pull", "", "only pull this reference (no credentials) and print its image ID and repo digests")
	flag.Parse()
	if !strings.HasPrefix(*endpoint, "unix://") {
		fmt.Fprintln(os.Stderr, "-endpoint must be unix:///path")
		os.Exit(2)
	}
	// util.GetAddressAndDialer: "unix:///x.sock" -> addr "/x.sock" + unix dialer.
	addr := strings.TrimPrefix(*endpoint, "unix://")
	dialer := func(ctx context.Context, a string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// grpc.WithInsecure is Debian grpc-go 1.33's spelling of
	// insecure.NewCredentials(), which kubelet uses.
	conn, err := grpc.DialContext(ctx, addr,
		grpc.WithInsecure(),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16*1024*1024)),
	)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial %s: %v\n", addr, err)
		os.Exit(1)
	}
	defer conn.Close()
	c := runtimeapi.NewImageServiceClient(conn)
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), *timeout)
	}

	// kubelet's validateServiceConnection: "validate CRI v1 image API".
	cctx, ccancel := call()
	fs, err := c.ImageFsInfo(cctx, &runtimeapi.ImageFsInfoRequest{})
	ccancel()
	check(err == nil, "ImageFsInfo (connection validation): err=%v", err)
	if err != nil {
		os.Exit(1)
	}
	check(len(fs.ImageFilesystems) == 1 && fs.ImageFilesystems[0].FsId.GetMountpoint() != "",
		"ImageFsInfo mountpoint %q", fs.ImageFilesystems[0].FsId.GetMountpoint())
	if *validateOnly {
		finish()
	}
	if *pullOnly != "" {
		pullAndShow(c, *pullOnly, *timeout)
		finish()
	}

	spec := &runtimeapi.ImageSpec{Image: *image}
	// Absent: an empty response, no error.
	cctx, ccancel = call()
	st, err := c.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: spec})
	ccancel()
	check(err == nil && st.Image == nil, "ImageStatus before pull is empty: err=%v", err)

	// Without credentials: refused, Unauthenticated.
	cctx, ccancel = call()
	_, err = c.PullImage(cctx, &runtimeapi.PullImageRequest{Image: spec})
	ccancel()
	check(status.Code(err) == codes.Unauthenticated, "PullImage without credentials: %v", err)

	// A 1 ms deadline: DeadlineExceeded.
	dctx, dcancel := context.WithTimeout(context.Background(), time.Millisecond)
	_, err = c.PullImage(dctx, &runtimeapi.PullImageRequest{Image: spec,
		Auth: &runtimeapi.AuthConfig{Username: *user, Password: *pass}})
	dcancel()
	check(status.Code(err) == codes.DeadlineExceeded, "PullImage with a 1ms deadline: %v", err)

	// With credentials, as kubelet sends them from an image pull secret.
	cctx, ccancel = call()
	pr, err := c.PullImage(cctx, &runtimeapi.PullImageRequest{Image: spec,
		Auth: &runtimeapi.AuthConfig{Username: *user, Password: *pass}})
	ccancel()
	check(err == nil && strings.HasPrefix(pr.GetImageRef(), "sha256:"), "PullImage with credentials: ref=%q err=%v", pr.GetImageRef(), err)
	if err != nil {
		finish()
	}
	id := pr.ImageRef

	cctx, ccancel = call()
	st, err = c.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: spec})
	ccancel()
	check(err == nil && st.Image != nil && st.Image.Id == id && st.Image.Size > 0,
		"ImageStatus after pull: id=%q size=%d err=%v", st.GetImage().GetId(), st.GetImage().GetSize(), err)

	cctx, ccancel = call()
	li, err := c.ListImages(cctx, &runtimeapi.ListImagesRequest{})
	ccancel()
	found := false
	for _, im := range li.GetImages() {
		if im.Id == id {
			found = true
			check(len(im.RepoTags) == 1 && im.RepoTags[0] == *image, "ListImages repo_tags %v", im.RepoTags)
		}
	}
	check(err == nil && found, "ListImages lists the image: err=%v", err)

	cctx, ccancel = call()
	_, err = c.RemoveImage(cctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: id}})
	ccancel()
	check(err == nil, "RemoveImage by ID: err=%v", err)

	cctx, ccancel = call()
	st, err = c.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: spec})
	ccancel()
	check(err == nil && st.Image == nil, "ImageStatus after remove is empty: err=%v", err)

	// Removing an absent image succeeds.
	cctx, ccancel = call()
	_, err = c.RemoveImage(cctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: id}})
	ccancel()
	check(err == nil, "RemoveImage of an absent image: err=%v", err)
	finish()
}

func finish() {
	if failures > 0 {
		fmt.Printf("go client: %d check(s) failed\n", failures)
		os.Exit(1)
	}
	fmt.Println("go client: all checks passed")
	os.Exit(0)
}

// pullAndShow pulls ref as kubelet does for a public image and prints what
// ImageStatus then reports: "image-id <id>" and one "repo-digest <d>" a line.
func pullAndShow(c runtimeapi.ImageServiceClient, ref string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	spec := &runtimeapi.ImageSpec{Image: ref}
	pr, err := c.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec})
	check(err == nil, "PullImage %s: ref=%q err=%v", ref, pr.GetImageRef(), err)
	if err != nil {
		return
	}
	st, err := c.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec})
	check(err == nil && st.GetImage().GetId() == pr.GetImageRef(), "ImageStatus %s: err=%v", ref, err)
	fmt.Printf("image-id %s\n", pr.GetImageRef())
	for _, d := range st.GetImage().GetRepoDigests() {
		fmt.Printf("repo-digest %s\n", d)
	}
}
