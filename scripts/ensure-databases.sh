#!/usr/bin/env bash
# Make PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306) answer for the test suite.
# A server that is installed but down is started; one that is missing is installed from Debian packages
# when running as root. This script never fails the build by itself: the test suite decides whether a
# missing backend is skipped (loudly) or fatal (BOSHREG_REQUIRE, set by CI).
set -u

say() { echo "databases: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 60); do
        port_open "$1" && return 0
        sleep 0.5
    done
    return 1
}

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "cannot install $* (not root, or no apt-get)"
        return 1
    fi
    say "installing $* from Debian packages"
    apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_postgres() {
    if port_open 5432; then say "PostgreSQL is up"; return 0; fi
    local fresh=0
    if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql || return 1
        fresh=1
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 || { say "PostgreSQL did not come up on 127.0.0.1:5432"; return 1; }
    if [ "$fresh" = 1 ]; then
        # The suite logs in as postgres/postgres over TCP (trust-configured servers ignore the password).
        runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'postgres'"
    fi
}

ensure_mariadb() {
    if port_open 3306; then say "MariaDB is up"; return 0; fi
    local fresh=0
    if [ ! -x /usr/sbin/mariadbd ]; then
        apt_install mariadb-server || return 1
        fresh=1
    fi
    say "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    wait_port 3306 || { say "MariaDB did not come up on 127.0.0.1:3306"; return 1; }
    if [ "$fresh" = 1 ]; then
        # The suite logs in as root with an empty password over TCP.
        mariadb -u root -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')"
    fi
}

ensure_postgres || say "WARNING: PostgreSQL unavailable; its tests will be skipped unless required"
ensure_mariadb || say "WARNING: MariaDB unavailable; its tests will be skipped unless required"
exit 0
