#!/usr/bin/env bash
# Proves every artefact installs and runs here; run by scripts/test (and so by .ci/run). Needs
# root (dpkg -i, buildah) and the Debian packages lintian, rpm, rpmlint, buildah, help2man.
#
#   packaging/test.sh            # builds with packaging/build.sh first
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/packaging
fail() { echo "packaging/test.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }

packaging/build.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
agent_deb=$(ls "$out"/vigil-agent_"$version"*.deb)
agg_deb=$(ls "$out"/vigil-aggregator_"$version"*.deb)
agent_rpm=$(ls "$out"/vigil-agent-"$version"*.rpm)
agg_rpm=$(ls "$out"/vigil-aggregator-"$version"*.rpm)

step "glibc floor: 2.34 (Amazon Linux 2023, RHEL 9)"
for bin in vigil-agent vigil-aggregator vigil-rules; do
  newest=$(objdump -T "target/release/$bin" | grep -o 'GLIBC_2\.[0-9]*' | sort -t. -k2 -n -u | tail -1)
  echo "$bin needs $newest" >&2
  [ "${newest#GLIBC_2.}" -le 34 ] || fail "$bin needs $newest (> 2.34)"
done

step "systemd units: verify and security (each at most 2.0)"
for unit in packaging/systemd/*.service; do
  score=$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  echo "$(basename "$unit"): exposure $score" >&2
  awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || fail "$unit scores $score (> 2.0)"
done

step "lintian"
# Warnings and errors fail; the overrides shipped in each package say why they apply.
lintian --fail-on error,warning --display-info "$agent_deb" "$agg_deb"

step "dpkg -i"
dpkg -i "$agent_deb" "$agg_deb" >/dev/null
for bin in vigil-agent vigil-aggregator vigil-rules; do
  /usr/bin/$bin --version | grep -q "$version" || fail "$bin --version"
done
getent passwd vigil >/dev/null || fail "no vigil user"
for f in /etc/vigil/agent.toml /etc/vigil/aggregator.toml /etc/vigil/rules/instances.toml \
         /usr/lib/systemd/system/vigil-agent.service /usr/lib/systemd/system/vigil-aggregator.service \
         /usr/share/man/man1/vigil-agent.1.gz /usr/share/man/man1/vigil-rules.1.gz; do
  [ -f "$f" ] || fail "$f not installed"
done
dpkg-query -W -f='${Conffiles}\n' vigil-agent vigil-aggregator | grep -q /etc/vigil/aggregator.toml || fail "conffiles"
/usr/bin/vigil-agent --check-config /etc/vigil/agent.toml
/usr/bin/vigil-aggregator --check-config /etc/vigil/aggregator.toml
/usr/bin/vigil-rules check /etc/vigil/rules/*.toml
# With the binaries in place, the units verify cleanly (man: references need man-db).
SYSTEMD_LOG_LEVEL=err systemd-analyze verify --man=no /usr/lib/systemd/system/vigil-agent.service /usr/lib/systemd/system/vigil-aggregator.service

step "dpkg --purge"
dpkg --purge vigil-agent vigil-aggregator >/dev/null
for f in /usr/bin/vigil-agent /usr/bin/vigil-aggregator /usr/bin/vigil-rules /etc/vigil \
         /usr/lib/systemd/system/vigil-agent.service /usr/lib/systemd/system/vigil-aggregator.service; do
  [ ! -e "$f" ] || fail "$f left behind"
done

step "rpm: the same files as the deb"
# Debian's copyright, changelog and lintian overrides are /usr/share/licenses/*/LICENSE in RPM.
deb_files() { dpkg-deb -c "$1" | awk '{print $6}' | sed 's#^\./#/#' | grep -v '/$' \
  | grep -v -e '/copyright$' -e '/changelog.Debian.gz$' -e '^/usr/share/lintian/' | sort; }
rpm_files() { rpm -qpl "$1" 2>/dev/null | grep -v -e '^/usr/share/licenses/' | sort; }
for pair in "$agent_deb $agent_rpm" "$agg_deb $agg_rpm"; do
  set -- $pair
  diff <(deb_files "$1") <(rpm_files "$2") || fail "$(basename "$1") and $(basename "$2") differ"
  rpm -qp --configfiles "$2" 2>/dev/null | grep -q '^/etc/vigil/' || fail "$2: no config files"
done
for bin in vigil-aggregator vigil-rules; do
  rpm -qpl "$agg_rpm" 2>/dev/null | grep -qx "/usr/share/man/man1/$bin.1.gz" || fail "no man page for $bin in the rpm"
done
rpm -qpl "$agent_rpm" 2>/dev/null | grep -qx /usr/share/man/man1/vigil-agent.1.gz || fail "no man page for vigil-agent in the rpm"

step "rpmlint"
rpmlint --config packaging/rpm/rpmlint.toml "$agent_rpm" "$agg_rpm"

step "OCI images"
for name in vigil-agent vigil-aggregator; do
  img="localhost/$name:$version"
  buildah --storage-driver vfs inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' "$img" | grep -q '^65532:65532 \[/usr/bin/'"$name"'\]' || fail "$img config"
  c=$(buildah --storage-driver vfs from --quiet "$img")
  mnt=$(buildah --storage-driver vfs mount "$c")
  echo "$img: $(du -sh "$mnt" | cut -f1) on disk, $(find "$mnt" -type f | wc -l) files:" >&2
  (cd "$mnt" && find . -type f | sort | sed 's/^\./  /') >&2
  buildah --storage-driver vfs run --isolation chroot "$c" -- "/usr/bin/$name" --version | grep -q "$version" || fail "$img does not run"
  buildah --storage-driver vfs run --isolation chroot "$c" -- "/usr/bin/$name" --check-config "/etc/vigil/${name#vigil-}.toml" || fail "$img: its config does not check"
  buildah --storage-driver vfs umount "$c" >/dev/null
  buildah --storage-driver vfs rm "$c" >/dev/null
done
buildah --storage-driver vfs images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep vigil >&2

step "Kubernetes manifests"
python3 packaging/kubernetes/check.py target/release

step "ok"
