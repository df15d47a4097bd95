#!/usr/bin/env bash
# Install the Debian tools the test suite uses when they are missing (as root): genisoimage, the tool
# Nova builds config drives with; iproute2 (ip netns, bridges) for the outage drill; prometheus for its
# promtool, which checks and unit-tests the example alert rules; chromium, the headless browser the
# dashboard's tests drive (through Playwright, with this browser: Playwright downloads none); systemd for
# systemd-analyze, which verifies the unit `boshreg service-unit` prints. Never fails the build by itself: the suite
# skips a missing tool loudly, or fails when it is listed in BOSHREG_REQUIRE (CI lists it).
set -u
missing=()
command -v genisoimage >/dev/null || missing+=(genisoimage)
command -v ip >/dev/null || missing+=(iproute2)
command -v promtool >/dev/null || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "tools: cannot install ${missing[*]} (not root, or no apt-get); their tests will be skipped"
    exit 0
fi
echo "tools: installing ${missing[*]} from Debian packages"
# Packages must not start their services here (prometheus would serve on :9090): Debian's policy-rc.d says no.
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1
fi
apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    echo "tools: WARNING: installing ${missing[*]} failed"
[ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
exit 0
