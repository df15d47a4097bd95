#!/usr/bin/env bash
# The load generator and the reference server for `make bench`: wrk and nginx from Debian packages.
set -u
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "bench: ${missing[*]} missing and cannot be installed here (not root, or no apt-get)" >&2
    exit 1
fi
echo "bench: installing ${missing[*]} from Debian packages"
apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
