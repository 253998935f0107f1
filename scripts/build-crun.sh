#!/usr/bin/env bash
# Builds crun 1.8.1 (Debian's source) with CRIU support against stasis's
# libcriu (crates/libcriu): Debian's own crun is built without it. The
# build lives in a cache directory (default target/crun, never committed);
# prints the path of the built crun. The tests find it through
# STASIS_CRUN (.ci/run exports it), or at this default place.
#
# Needs: curl, and crun's build dependencies (Debian: libcap-dev
# libseccomp-dev libsystemd-dev libyajl-dev gperf go-md2man python3
# automake autoconf libtool pkgconf make gcc).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cache=${STASIS_CRUN_CACHE:-$repo/target/crun}
version=1.8.1
url=http://deb.debian.org/debian/pool/main/c/crun/crun_${version}.orig.tar.xz
# Debian's crun_1.8.1-1+deb12u1.dsc lists this checksum for the tarball.
sha256=01b68269d94e5fe11106a9b14c2f144be03b16ec798951f4efa6aa16ba9da29a
src=$cache/crun-$version
mkdir -p "$cache"

# Our header and a criu.pc saying which criu stasis answers for (its
# VERSION request: 4.1), so crun's configure enables CRIU (>= 3.15),
# join-ns (> 3.16) and pre-dump (> 3.16.1) support.
mkdir -p "$cache/include/criu" "$cache/pkgconfig"
cp crates/libcriu/include/criu/criu.h "$cache/include/criu/criu.h"
cat > "$cache/pkgconfig/criu.pc.new" <<PC
Name: criu
Description: stasis's libcriu (criu's C client API over stasis swrk)
Version: 4.1
Cflags: -I$cache/include
Libs:
PC
mv "$cache/pkgconfig/criu.pc.new" "$cache/pkgconfig/criu.pc"

stamp=$(sha256sum "$cache/include/criu/criu.h" "$0" | sha256sum | cut -c1-16)
if [ -x "$src/crun" ] && [ "$(cat "$src/.stasis-stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$src/crun"
    exit 0
fi

tarball=$cache/crun_${version}.orig.tar.xz
if [ ! -f "$tarball" ]; then
    curl -sSfL -o "$tarball.part" "$url" >&2
    mv "$tarball.part" "$tarball"
fi
if ! echo "$sha256  $tarball" | sha256sum -c --quiet - >&2; then
    echo "build-crun: $tarball does not match Debian's checksum" >&2
    rm -f "$tarball"
    exit 1
fi
rm -rf "$src"
tar -C "$cache" -xf "$tarball"
(
    cd "$src"
    PKG_CONFIG_PATH=$cache/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH} \
        CPPFLAGS="-I$cache/include" ./configure --disable-dependency-tracking >"$cache/configure.log" 2>&1 ||
        { tail -30 "$cache/configure.log" >&2; exit 1; }
    grep -q '^#define HAVE_CRIU 1' config.h || { echo "build-crun: configure left CRIU out" >&2; exit 1; }
    # In steps: crun's sources include libocispec's generated headers,
    # and `make crun` alone neither waits for them nor makes git-version.h.
    { make .version git-version.h && make -C libocispec -j"$(nproc)" && make -j"$(nproc)" crun; } \
        >"$cache/make.log" 2>&1 || { tail -30 "$cache/make.log" >&2; exit 1; }
)
"$src/crun" --version | grep -q '+CRIU' || { echo "build-crun: the built crun lacks +CRIU" >&2; exit 1; }
echo "$stamp" >"$src/.stasis-stamp"
echo "$src/crun"
