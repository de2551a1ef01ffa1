#!/usr/bin/env bash
# Builds the real control plane our tests run against (issue 14): etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler, from the published Go modules pinned in
# tests/apiserver/go.mod, into a cache folder ignored by git, once per pinned version set:
#
#   bash tests/apiserver/build.sh        # prints the folder holding the four binaries
#
# The cache is target/apiserver/<hash of go.mod and go.sum>/ (or $NETPOL_VERIFY_APISERVER_CACHE);
# a second call with the same pins does nothing. Needs Go (go.mod says which) and the Go module
# proxy. The first build takes about 8 minutes on two cores, 0.6 GB of Go modules and 4-6 GB of
# Go build cache (tests/apiserver/README.md has the measured figures).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if ! command -v go >/dev/null 2>&1; then
    echo "tests/apiserver/build.sh: the real-apiserver tests build kube-apiserver and etcd with Go (1.26 or newer): install Go and run again" >&2
    exit 2
fi

key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
cache="${NETPOL_VERIFY_APISERVER_CACHE:-$repo/target/apiserver}/$key"
bin="$cache/bin"
tools=(
    "etcd go.etcd.io/etcd/server/v3"
    "kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver"
    "kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager"
    "kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler"
)

built() {
    for tool in "${tools[@]}"; do
        [ -x "$bin/${tool%% *}" ] || return 1
    done
}

# The release the binaries report at /version (kubectl and our CNI detection read it): a build
# from the module proxy has no git tree to take it from, so it is stamped in as Kubernetes'
# own build does.
release="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/go.mod")"
major="${release#v}" major="${major%%.*}"
minor="${release#v*.}" minor="${minor%%.*}"
stamp="-s"
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $package.gitVersion=$release -X $package.gitMajor=$major -X $package.gitMinor=$minor"
    stamp+=" -X $package.gitTreeState=clean"
done

mkdir -p "$cache"
# One build at a time: test binaries running at once wait for the first to finish.
exec 9>"$cache/lock"
flock 9
if ! built; then
    mkdir -p "$bin"
    cd "$here"
    start=$SECONDS
    for tool in "${tools[@]}"; do
        name="${tool%% *}" package="${tool#* }"
        [ -x "$bin/$name" ] && continue
        echo "tests/apiserver/build.sh: building $name ($package) into $bin" >&2
        CGO_ENABLED=0 go build -trimpath -ldflags="$stamp" -o "$bin/.$name.partial" "$package"
        mv "$bin/.$name.partial" "$bin/$name"
    done
    echo "tests/apiserver/build.sh: built in $((SECONDS - start)) s" >&2
fi
echo "$bin"
