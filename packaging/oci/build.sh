#!/usr/bin/env bash
# Builds the OCI images without a daemon: buildah, vfs storage, from scratch. Each image holds the
# binary, the shared libraries it links (from ldd), CA certificates (for HTTPS to AWS, Slack and
# aggregators behind TLS), a passwd/group with the unprivileged user 65532, its default config,
# /tmp and its state directory — nothing else: no shell, no package manager.
#
#   packaging/oci/build.sh            # after the release build; writes target/packaging/*.oci.tar
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/packaging
mkdir -p "$out"
b() { buildah --storage-driver vfs "$@"; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc" "$root/state" "$root/tree/tmp" "$root/tree/var/lib"
chmod 1777 "$root/tree/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\nvigil:x:65532:65532:vigil:/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nvigil:x:65532:\n' > "$root/etc/group"

image() { # name binary config state_dir port
  local name=$1 bin=$2 config=$3 state=$4 port=$5
  local c
  c=$(b from --quiet scratch)
  b copy --quiet "$c" "$root/etc/passwd" "$root/etc/group" /etc/
  b copy --quiet "$c" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
  # The dynamic loader and the libraries the binary links, at the paths ldd gives.
  for lib in $(ldd "target/release/$bin" | grep -o '/[^ ]*'); do
    b copy --quiet "$c" "$lib" "$lib"
  done
  b copy --quiet --chmod 755 "$c" "target/release/$bin" "/usr/bin/$bin"
  b copy --quiet "$c" "$config" "/etc/vigil/$(basename "$config")"
  # /tmp (SQLite may spill there) and /var/lib owned by root; only the state dir by the user.
  b copy --quiet "$c" "$root/tree/" /
  b copy --quiet --chown 65532:65532 "$c" "$root/state" "$state"
  # Two malloc arenas (glibc makes 8 a core), big blocks given back: see the systemd units.
  b config --user 65532:65532 --entrypoint "[\"/usr/bin/$bin\"]" --cmd '[]' \
    --env MALLOC_ARENA_MAX=2 --env MALLOC_MMAP_THRESHOLD_=1048576 --port "$port" --volume "$state" --workingdir / \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --label "org.opencontainers.image.source=https://example.invalid/vigil" "$c"
  b commit --quiet --rm "$c" "localhost/$name:$version" >/dev/null
  rm -f "$out/$name-$version.oci.tar"
  b push --quiet "localhost/$name:$version" "oci-archive:$out/$name-$version.oci.tar"
  echo "built localhost/$name:$version -> $out/$name-$version.oci.tar" >&2
}

image vigil-agent vigil-agent packaging/oci/agent.toml /var/lib/vigil-agent 9471
image vigil-aggregator vigil-aggregator packaging/oci/aggregator.toml /var/lib/vigil 9470
