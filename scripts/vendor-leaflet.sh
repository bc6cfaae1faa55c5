#!/usr/bin/env bash
# Vendor Leaflet (map page of `eoforge serve`) from the npm registry into the package's static folder.
# Only dist/leaflet.js (~147 KB, minified) and dist/leaflet.css (~14 KB) are kept and committed: the service
# then works from a plain pip install with no Node.js and never loads anything from a CDN. Re-run this to
# update; the tarball's integrity is checked against the pin below.
set -euo pipefail
VERSION=1.9.4
INTEGRITY="sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA=="
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/eoforge/serve/static/vendor/leaflet"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack "leaflet@$VERSION" --silent >/dev/null)
GOT="sha512-$(openssl dgst -sha512 -binary "$TMP/leaflet-$VERSION.tgz" | base64 -w0)"
if [ "$GOT" != "$INTEGRITY" ]; then echo "leaflet-$VERSION.tgz: integrity $GOT differs from the pin" >&2; exit 1; fi
tar -xzf "$TMP/leaflet-$VERSION.tgz" -C "$TMP" package/dist/leaflet.js package/dist/leaflet.css package/LICENSE
mkdir -p "$DEST"
cp "$TMP/package/dist/leaflet.js" "$TMP/package/dist/leaflet.css" "$DEST/"
cp "$TMP/package/LICENSE" "$DEST/LICENSE"
echo "$VERSION" > "$DEST/VERSION"
echo "vendored leaflet $VERSION into $DEST"
