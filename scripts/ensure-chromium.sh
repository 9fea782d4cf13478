#!/usr/bin/env sh
# The dashboard's browser tests drive Debian's Chromium: install it when it is missing
# (apt-get, as root or through sudo). Where that cannot be done, say how and go on:
# the browser tests then fail naming what is missing.
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; }; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium &&
    exit 0
fi
echo "tessera tests: Chromium not found and could not be installed; install it (Debian: apt-get install chromium) for the dashboard's browser tests" >&2
exit 0
