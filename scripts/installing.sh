# Sourced by the installer scripts the tests call (s3-clients.sh, browser.sh, promtool.sh).
#
# Tests run them at once on a fresh machine, so each runs under one lock, held by flock
# while the script runs and never inherited by what it starts (-o): two apt-gets at once
# fail on dpkg's lock, two pip installs into one environment corrupt it. apt-get also
# waits for dpkg's lock if something else holds it.
if [ -z "${MSPACE_INSTALLING:-}" ]; then
    MSPACE_INSTALLING=1 exec flock -o "${TMPDIR:-/tmp}/mspace-installers.lock" "$0" "$@"
fi

# apt_install PACKAGE...: Debian packages, as root or through sudo; the package lists are
# updated only if the first try fails.
apt_install() {
    sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    apt="apt-get -o DPkg::Lock::Timeout=600"
    $sudo env DEBIAN_FRONTEND=noninteractive $apt install -y -q "$@" >&2 ||
        { $sudo $apt update -q >&2 &&
            $sudo env DEBIAN_FRONTEND=noninteractive $apt install -y -q "$@" >&2; }
}
