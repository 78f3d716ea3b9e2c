#!/usr/bin/env bash
# Installs (and, for daemons, starts and stops) the real services the tests use.
# Sourced by scripts/test.sh. Each `need_*` installs what is missing and fails loudly: a test
# that needs a service must fail when it is missing, never skip.
#
# Today's tests need: LibreOffice (headless, to open the workbooks we write and to make .ods)
# with its Python bridge (python3-uno, for LibreOffice editing a workbook), python3, and tmpfs mounts (root) for the full-disk tests.
# Later ones add single-node SLURM, sshd on localhost and an SMTP sink here.

APT_UPDATED=${APT_UPDATED:-0}

apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "$@"
}

need_libreoffice() {
    if ! command -v soffice >/dev/null 2>&1; then
        echo "== installing LibreOffice (headless calc)"
        apt_install libreoffice-calc-nogui >/tmp/neronet-apt-libreoffice.log 2>&1 \
            || { tail -20 /tmp/neronet-apt-libreoffice.log; return 1; }
    fi
    soffice --version | head -1
}

need_uno() {
    # LibreOffice's Python bridge, for the tests where a real LibreOffice edits and saves a
    # workbook (scripts/lo-edit.py); it must be the system python3 that imports it.
    if ! /usr/bin/python3 -c 'import uno' >/dev/null 2>&1; then
        echo "== installing python3-uno"
        apt_install python3-uno >/tmp/neronet-apt-uno.log 2>&1 \
            || { tail -20 /tmp/neronet-apt-uno.log; return 1; }
    fi
    /usr/bin/python3 -c 'import uno' && echo "python3-uno: ok"
}

need_tmpfs() {
    # The full-disk tests put an agent's workdir (and a kid's run dir) on a small tmpfs.
    local d
    d=$(mktemp -d)
    if ! mount -t tmpfs -o size=64k tmpfs "$d" 2>/dev/null; then
        rmdir "$d"
        echo "the tests need to mount a tmpfs (run as root)" >&2
        return 1
    fi
    umount "$d" && rmdir "$d"
    echo "tmpfs mounts: ok"
}

need_python3() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 --version
}

stop_services() {
    # LibreOffice runs per conversion (private profiles) and leaves no daemon; stray test agents
    # (neromum) exit on their own when idle, but a finished test run should leave nothing behind.
    pkill -f 'neromum serve --workdir /tmp/neronet-test-' 2>/dev/null || true
    pkill -f 'neromum serve --workdir .*/neronet-test-' 2>/dev/null || true
}
