#!/bin/sh
# Build the Debian package from this work tree, out of tree:
#   packaging/build-deb.sh [OUTDIR]        (default OUTDIR: ./dist/deb)
# copies the tracked and untracked-but-not-ignored files into
# OUTDIR/ahoyconference-VERSION/, runs `dpkg-buildpackage -us -uc -b` there
# and leaves OUTDIR/ahoyconference_VERSION_ARCH.deb; its path is the last line
# printed.  The work tree itself is never touched.  pip's cache is reused
# between builds ($PIP_CACHE_DIR, else ~/.cache/pip).
# Build dependencies: apt-get build-dep ./   (or: apt-get install debhelper
# python3-venv ca-certificates)
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$SRC/dist/deb}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VERSION=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
ARCH=$(dpkg-architecture -q DEB_HOST_ARCH)
BUILD=$OUT/ahoyconference-$VERSION

rm -rf "$BUILD"
mkdir -p "$BUILD"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    # Files that exist (a file deleted but not yet committed is skipped).
    (cd "$SRC" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -C "$BUILD" -xf -
else
    (cd "$SRC" && tar --exclude=./.venv --exclude=./.git --exclude=./dist \
        --exclude='./_trial_temp*' -cf - .) | tar -C "$BUILD" -xf -
fi
rm -f "$OUT"/ahoyconference_"$VERSION"_*.deb "$OUT"/ahoyconference_"$VERSION"_*.buildinfo \
    "$OUT"/ahoyconference_"$VERSION"_*.changes

start=$(date +%s)
(cd "$BUILD" && dpkg-buildpackage -us -uc -b)
end=$(date +%s)
DEB=$OUT/ahoyconference_${VERSION}_${ARCH}.deb
test -f "$DEB"
echo "built in $((end - start)) s: $(du -h "$DEB" | cut -f1)"
echo "$DEB"
