#!/usr/bin/env bash
# Builds every artefact with one command: release binaries, man pages (help2man, from --help),
# the .deb packages (cargo-deb), the .rpm packages (cargo-generate-rpm) and the OCI images
# (buildah). Everything lands in target/packaging/.
#
#   packaging/build.sh
#
# Needs cargo-deb and cargo-generate-rpm (installed here with `cargo install --locked` when
# missing), help2man and buildah (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/packaging
mkdir -p "$out/man"

for tool in cargo-deb cargo-generate-rpm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "packaging/build.sh: installing $tool from crates.io" >&2
    cargo install --locked --quiet "$tool"
  fi
done
for tool in help2man buildah; do
  command -v "$tool" >/dev/null 2>&1 || { echo "packaging/build.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

cargo build --release --locked -p vigil-agent -p vigil-aggregator -p vigil-rules-cli

# Man pages from each binary's own --help and --version.
for bin in vigil-agent vigil-aggregator vigil-rules; do
  case $bin in
    vigil-agent) what="lightweight metrics agent for EC2 instances and Kubernetes pods" ;;
    vigil-aggregator) what="rule evaluation, alerts and Auto Scaling actions for AWS fleets" ;;
    vigil-rules) what="check, unit-test and backtest Vigil rule files" ;;
  esac
  help2man --no-info --section 1 --name "$what" --version-string "$("target/release/$bin" --version | awk '{print $2}')" \
    "target/release/$bin" | gzip -9n > "$out/man/$bin.1.gz"
done

rm -f "$out"/*.deb "$out"/*.rpm
cargo deb --no-build --quiet -p vigil-agent -o "$out/"
cargo deb --no-build --quiet -p vigil-aggregator -o "$out/"
cargo generate-rpm -p agent -o "$out/"
cargo generate-rpm -p aggregator -o "$out/"

packaging/oci/build.sh
ls -l "$out"/*.deb "$out"/*.rpm "$out"/*.oci.tar
