#!/usr/bin/env bash
# Installs (and, for daemons, starts and stops) the real services the tests use.
# Sourced by scripts/test.sh. Each `need_*` installs what is missing and fails loudly: a test
# that needs a service must fail when it is missing, never skip.
#
# The tests need: LibreOffice (headless, to open the workbooks we write and to make .ods) with
# its Python bridge (python3-uno, for LibreOffice editing a workbook), python3, tmpfs mounts
# (root) for the full-disk tests, a single-node SLURM, a single-node Grid Engine, two "login nodes" (sshd for the user
# `nerolab`, one here and one in a network namespace with its own hostname, sharing
# /home/nerolab), the static (musl) build of the cluster binaries, and python3-aiosmtpd with
# openssl for the alert tests' own SMTP servers.
#
# Daemons a run finds already running are reused and left running; `stop_services` stops only
# what this run started. Each piece can also be stopped by hand: `. scripts/services.sh;
# stop_login2; stop_sshd_lab; stop_slurm; stop_sge`.

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

need_smtp() {
    # The alert tests (tests/notify.rs) start their own SMTP sinks (aiosmtpd, plain, STARTTLS
    # or implicit TLS with a CA made by openssl) and webhook recorders from
    # tests/fixtures/notify/. Debian's python3-aiosmtpd: it must be /usr/bin/python3 that
    # imports it (a pyenv python on PATH lacks it).
    if ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        echo "== installing python3-aiosmtpd"
        apt_install python3-aiosmtpd >/tmp/neronet-apt-aiosmtpd.log 2>&1 \
            || { tail -20 /tmp/neronet-apt-aiosmtpd.log; return 1; }
    fi
    command -v openssl >/dev/null 2>&1 || apt_install openssl >/dev/null 2>&1 || return 1
    echo "python3-aiosmtpd: $(/usr/bin/python3 -c 'import aiosmtpd; print(aiosmtpd.__version__)')"
}

# ---------------------------------------------------------------------------------------------
# Helpers for the daemons below.

# Run a command quietly, its output in LOG; on failure show the log's tail and fail.
quietly() { # LOG CMD...
    local log=$1
    shift
    "$@" >"$log" 2>&1 || { echo "failed: $* (tail of $log:)" >&2; tail -20 "$log" >&2; return 1; }
}

pid_alive() { # PIDFILE
    [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

# Stop the process named by a pidfile: SIGTERM, up to 5 s, then SIGKILL; remove the pidfile.
stop_pidfile() { # PIDFILE
    local f=$1 p i
    if [ -s "$f" ]; then
        p=$(cat "$f")
        if kill "$p" 2>/dev/null; then
            for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$p" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

# Poll CMD (a shell string) every 0.1 s for up to SECS seconds.
wait_for() { # SECS CMD
    local i
    for i in $(seq $(($1 * 10))); do
        eval "$2" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    eval "$2" >/dev/null 2>&1
}

since() { # START_NS -> seconds with one decimal
    awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'
}

# Install FILE from stdin when its content differs (atomically: a test reading it meanwhile sees
# the old or the new one); returns 0 when it changed.
write_if_changed() { # FILE [MODE]
    local f=$1 tmp
    tmp=$(mktemp "$f.XXXXXX")
    cat >"$tmp"
    chmod "${2:-0644}" "$tmp"
    if [ -f "$f" ] && cmp -s "$tmp" "$f"; then
        rm -f "$tmp"
        return 1
    fi
    mv "$tmp" "$f"
}

# ---------------------------------------------------------------------------------------------
# SLURM 22.05, one node (this machine), partition `debug`, no accounting (`sacct` fails: the
# warden must cope, as on clusters without slurmdbd). Daemons started directly (no systemd).

slurm_up() {
    scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
    case "$(sinfo -h -N -o %T 2>/dev/null | head -1)" in
        idle | mixed | allocated) return 0 ;;
    esac
    return 1
}

slurm_conf() { # HOST -> the slurm.conf the tests expect
    local host=$1 mem
    # RealMemory a bit below what slurmd detects, else the node drains ("Low RealMemory").
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    cat <<EOF
# Written by neronet's scripts/services.sh (need_slurm): a one-node test cluster.
ClusterName=ci
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: works on cgroup v1, v2, hybrid and in sandboxes.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
# Finished jobs stay visible to 'scontrol show job' and 'squeue --states=all' for an hour.
MinJobAge=3600
KillWait=5
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MessageTimeout=10
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=$host CPUs=$(nproc) RealMemory=$((mem * 9 / 10)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# Does the running cluster have the settings the tests rely on?
slurm_conf_fits() { # HOST
    local k
    for k in MinJobAge=3600 KillWait=5 AccountingStorageType=accounting_storage/none \
        "NodeName=$1 " "PartitionName=debug "; do
        grep -q "^$k" /etc/slurm/slurm.conf 2>/dev/null || return 1
    done
}

need_slurm() {
    local t0 host st="" wj i
    t0=$(date +%s%N)
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
        || ! command -v sbatch >/dev/null 2>&1 || ! [ -x /usr/sbin/munged ]; then
        echo "== installing SLURM (slurmctld slurmd slurm-client munge)"
        quietly /tmp/neronet-apt-slurm.log apt_install slurmctld slurmd slurm-client munge || return 1
    fi
    host=$(hostname -s)
    if slurm_up && slurm_conf_fits "$host"; then
        echo "SLURM: already up (node $host $(sinfo -h -N -o %T | head -1)); left running"
        return 0
    fi
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then
        # Up with other settings (or a sick node): restart it with ours.
        echo "SLURM: running with other settings or a node not idle; restarting it"
        stop_slurm >/dev/null
    fi
    # slurmctld binds SlurmctldHost and slurmd looks up NodeName: the name must resolve.
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts

    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if ! { munge -n | unmunge; } >/dev/null 2>&1; then
        quietly /tmp/neronet-munged.log runuser -u munge -- /usr/sbin/munged --force || return 1
        wait_for 5 'munge -n | unmunge' || { echo "munged does not answer" >&2; return 1; }
        NERONET_STARTED_MUNGE=1
    fi

    install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
    install -d -o root -g root -m 0755 /var/spool/slurmd /etc/slurm
    touch /var/log/slurm/jobcomp.log
    chown slurm:slurm /var/log/slurm/jobcomp.log
    slurm_conf "$host" | write_if_changed /etc/slurm/slurm.conf || true

    # slurmctld drops to SlurmUser before writing its pidfile: make it writable first.
    if ! pid_alive /run/slurmctld.pid; then
        touch /run/slurmctld.pid
        chown slurm:slurm /run/slurmctld.pid
        quietly /tmp/neronet-slurmctld.log slurmctld -i || return 1
    fi
    NERONET_STARTED_SLURM=1
    wait_for 20 "scontrol ping | grep -q 'is UP'" \
        || { echo "slurmctld is not UP:" >&2; tail -20 /var/log/slurm/slurmctld.log >&2; return 1; }
    if ! pid_alive /run/slurmd.pid; then
        quietly /tmp/neronet-slurmd.log slurmd || return 1
    fi
    if ! wait_for 20 slurm_up; then
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
        wait_for 5 slurm_up || {
            echo "SLURM node not idle: $(sinfo -h -N -o '%T %E')" >&2
            tail -20 /var/log/slurm/slurmd.log >&2
            return 1
        }
    fi
    # For its first ~3 s slurmctld schedules no batch job: run one now so the tests' first job
    # starts in ~0.4 s. Polled here (sbatch --wait backs off to 8 s between polls).
    wj=$(sbatch --parsable -o /dev/null -t 1 -J neronet-warmup --wrap true) || return 1
    for i in $(seq 300); do
        st=$(scontrol show job "$wj" 2>/dev/null | grep -o 'JobState=[A-Z]*' || true)
        case "$st" in
            JobState=COMPLETED) break ;;
            JobState=FAILED | JobState=CANCELLED | JobState=TIMEOUT | JobState=NODE_FAIL)
                echo "SLURM warm-up job $wj: $st" >&2
                return 1
                ;;
        esac
        sleep 0.1
    done
    [ "$st" = JobState=COMPLETED ] || { echo "SLURM warm-up job $wj did not finish: $st" >&2; return 1; }
    echo "SLURM: up in $(since "$t0") s (node $host, partition debug)"
}

# Cancel every job and wait for them to go (else job processes outlive slurmd), then stop
# slurmd, slurmctld and munged, by pidfile, never by name.
stop_slurm() {
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then
        scancel --full --user=root 2>/dev/null || true
        # Every user's jobs: the tests submit as nerolab too.
        squeue -h -o %i 2>/dev/null | xargs -r scancel --full 2>/dev/null || true
        wait_for 15 '[ -z "$(squeue -h -t R,CG,S,PD 2>/dev/null)" ]' || true
    fi
    stop_pidfile /run/slurmd.pid
    stop_pidfile /run/slurmctld.pid
    stop_pidfile /run/munge/munged.pid
    echo "SLURM stopped"
}

# ---------------------------------------------------------------------------------------------
# Grid Engine (Son of Grid Engine 8.1.9, Debian's gridengine-* packages), one node (this
# machine), queue `all.q` with one slot per CPU, rerunnable, accounting flushed at once.
# Daemons started directly (no systemd); settings: . /var/lib/gridengine/default/common/settings.sh

SGE_SETTINGS=/var/lib/gridengine/default/common/settings.sh

sge_up() {
    qstat -f -q all.q 2>/dev/null | awk 'index($1,"all.q@")==1 { found=1; if ($6 != "") bad=1 }
        END { exit !(found && !bad) }'
}

need_sge() {
    local t0 host ip canon common ed
    t0=$(date +%s%N)
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
    if ! [ -x /usr/lib/gridengine/sge_qmaster ] || ! [ -x /usr/lib/gridengine/sge_execd ] \
        || ! command -v qsub >/dev/null 2>&1; then
        echo "== installing Grid Engine (gridengine-master gridengine-exec gridengine-client)"
        # Without the master's name preseeded, postinst leaves act_qmaster empty.
        printf '%s\n' "gridengine-common shared/gridenginemaster string $host" \
            "gridengine-common shared/gridenginecell string default" \
            "gridengine-common shared/gridengineconfig boolean true" \
            "gridengine-master shared/gridenginemaster string $host" \
            "gridengine-client shared/gridenginemaster string $host" \
            "gridengine-exec shared/gridenginemaster string $host" | debconf-set-selections
        quietly /tmp/neronet-apt-sge.log apt_install gridengine-master gridengine-exec gridengine-client \
            || return 1
    fi
    export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
    if sge_up; then
        echo "Grid Engine: already up (all.q@$host); left running"
        return 0
    fi
    common=$SGE_ROOT/$SGE_CELL/common
    # commlib refuses a client whose IP resolves to another name ("access denied ... localhost"):
    # host_aliases makes them one host.
    ip=$(getent ahostsv4 "$host" | awk 'NR==1 { print $1 }')
    canon=$(getent hosts "$ip" | awk 'NR==1 { print $2 }')
    if [ -n "$canon" ] && [ "$canon" != "$host" ]; then echo "$host $canon" >"$common/host_aliases"; fi
    echo "$host" >"$common/act_qmaster"
    install -d -o sgeadmin -g sgeadmin /var/run/gridengine
    if ! pid_alive /var/spool/gridengine/qmaster/qmaster.pid; then
        quietly /tmp/neronet-sge-qmaster.log /usr/sbin/sge_qmaster || return 1
        NERONET_STARTED_SGE=1
    fi
    wait_for 20 'qconf -sh' || { echo "sge_qmaster does not answer" >&2; return 1; }
    # Root jobs allowed, no login shells (they source ~/.profile: pyenv's lock deadlocks two
    # tasks starting at once), fast load reports, accounting written at once, a 1 s scheduler.
    ed=$(mktemp)
    cat >"$ed" <<'EOS'
#!/bin/sh
sed -i -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
  -e 's/^load_report_time .*/load_report_time 00:00:05/' -e 's/^login_shells .*/login_shells none/' \
  -e 's/^reporting_params .*/reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00/' \
  -e '/^ *flush_time=/d;/^ *joblog=/d;/^ *sharelog=/d;/^ *accounting_flush_time/d' "$1"
EOS
    chmod +x "$ed"
    EDITOR=$ed quietly /tmp/neronet-sge-conf.log qconf -mconf global || { rm -f "$ed"; return 1; }
    cat >"$ed" <<'EOS'
#!/bin/sh
sed -i -e 's/^schedule_interval .*/schedule_interval 0:0:1/' -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/' "$1"
EOS
    EDITOR=$ed quietly /tmp/neronet-sge-conf.log qconf -msconf || { rm -f "$ed"; return 1; }
    rm -f "$ed"
    qconf -as "$host" >/dev/null 2>&1 || true
    qconf -ah "$host" >/dev/null 2>&1 || true
    if ! pid_alive /var/run/gridengine/execd.pid; then
        SGE_EXECD_PIDFILE=/var/run/gridengine/execd.pid quietly /tmp/neronet-sge-execd.log /usr/sbin/sge_execd \
            || return 1
        NERONET_STARTED_SGE=1
    fi
    wait_for 30 "qconf -se $host" || { echo "sge_execd did not register" >&2; return 1; }
    if ! qconf -shgrp @allhosts >/dev/null 2>&1; then
        printf 'group_name @allhosts\nhostlist %s\n' "$host" >/tmp/neronet-allhosts.hgrp
        quietly /tmp/neronet-sge-conf.log qconf -Ahgrp /tmp/neronet-allhosts.hgrp || return 1
    fi
    if ! qconf -sq all.q >/dev/null 2>&1; then
        qconf -sq | sed -e 's/^qname .*/qname all.q/' -e 's/^hostlist .*/hostlist @allhosts/' \
            -e 's/^load_thresholds .*/load_thresholds NONE/' -e 's/^pe_list .*/pe_list NONE/' \
            -e "s/^slots .*/slots $(nproc)/" -e 's/^rerun .*/rerun TRUE/' \
            -e 's|^shell .*|shell /bin/bash|' >/tmp/neronet-all.q
        quietly /tmp/neronet-sge-conf.log qconf -Aq /tmp/neronet-all.q || return 1
    fi
    # Usable once the first load report arrived (no `u`nknown state).
    wait_for 60 sge_up || { echo "all.q@$host is not usable:" >&2; qstat -f >&2; return 1; }
    echo "Grid Engine: up in $(since "$t0") s (all.q@$host; . $SGE_SETTINGS)"
}

# Delete every job first (sge_shepherd and job processes outlive an execd stop), then stop
# sge_execd and sge_qmaster, by pidfile, never by name.
stop_sge() {
    if [ -r "$SGE_SETTINGS" ] && (. "$SGE_SETTINGS" && qstat >/dev/null 2>&1); then
        (
            . "$SGE_SETTINGS"
            qdel -f -u '*' >/dev/null 2>&1 || true
            wait_for 20 '[ -z "$(qstat -u "*" 2>/dev/null)" ]' || true
            wait_for 5 '[ -z "$(ls /var/spool/gridengine/execd/*/active_jobs 2>/dev/null)" ]' || true
        )
    fi
    stop_pidfile /var/run/gridengine/execd.pid
    stop_pidfile /var/spool/gridengine/qmaster/qmaster.pid
    echo "Grid Engine stopped"
}

# ---------------------------------------------------------------------------------------------
# The first login node: sshd on 127.0.0.1:2222 for the user `nerolab` (its own config, host key
# and pidfile; /etc/ssh is not touched). Keys and configs live in $NERONET_LAB (0700):
#   ssh -F /tmp/neronet-sshlab/ssh_config nerolab 'cmd'    (and nerolab2 after need_login2)

# (Overridable, to try the functions beside a running lab: the tests use these defaults.)
NERONET_LAB=${NERONET_LAB:-/tmp/neronet-sshlab}
NERONET_LAB_USER=${NERONET_LAB_USER:-nerolab}
NERONET_LAB_PORT=${NERONET_LAB_PORT:-2222}
NERONET_LAB2_NS=neronet-lab2
NERONET_LAB2_HOST=lab2

lab_sshd_config() { # PORT ADDRESS PIDFILE HOSTKEY
    cat <<EOF
# Written by neronet's scripts/services.sh: a test login node for the user $NERONET_LAB_USER.
Port $1
ListenAddress $2
HostKey $4
PidFile $3
# Read as the user: it must lie in the user's home (a root-only directory is refused).
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers $NERONET_LAB_USER
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# Without PAM a locked account ('!' in /etc/shadow) is refused: the user gets '*' instead.
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
# One connection carries many channels (ssh multiplexing): the default 10 is too few.
MaxSessions 50
MaxStartups 50:30:100
LogLevel INFO
EOF
}

lab_ssh_config() {
    local alias addr port
    for alias in nerolab nerolab2; do
        if [ $alias = nerolab ]; then addr=127.0.0.1 port=$NERONET_LAB_PORT; else addr=10.77.0.2 port=22; fi
        cat <<EOF
Host $alias
  HostName $addr
  Port $port
  User $NERONET_LAB_USER
  IdentityFile $NERONET_LAB/id_ed25519
  IdentitiesOnly yes
  BatchMode yes
  StrictHostKeyChecking yes
  UserKnownHostsFile $NERONET_LAB/known_hosts
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
  ControlPath $NERONET_LAB/cm-%C
EOF
    done
}

# Start the sshd of CONFIG (its pidfile PIDFILE), or reload it when its config CHANGED (1);
# a PREFIX command, when given, runs it elsewhere (a namespace).
start_lab_sshd() { # CONFIG PIDFILE LOG CHANGED [PREFIX...]
    local cfg=$1 pidf=$2 log=$3 changed=$4
    shift 4
    install -d -m 0755 /run/sshd # privilege separation directory
    quietly "$log.check" /usr/sbin/sshd -t -f "$cfg" || return 1
    if pid_alive "$pidf"; then
        # SIGHUP: sshd re-executes itself with the new config; open sessions stay.
        if [ "$changed" = 1 ]; then kill -HUP "$(cat "$pidf")"; fi
        return 0
    fi
    rm -f "$pidf"
    "$@" /usr/sbin/sshd -f "$cfg" -E "$log" || return 1
    wait_for 5 "[ -s $pidf ]"
}

need_sshd_lab() {
    local t0 home changed=0 key state=running
    t0=$(date +%s%N)
    if ! [ -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1; then
        echo "== installing OpenSSH"
        quietly /tmp/neronet-apt-ssh.log apt_install openssh-server openssh-client || return 1
    fi
    id "$NERONET_LAB_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$NERONET_LAB_USER"
    usermod -p '*' "$NERONET_LAB_USER" # no password, yet not locked
    home=$(getent passwd "$NERONET_LAB_USER" | cut -d: -f6)
    install -d -m 0700 "$NERONET_LAB"
    for key in host_ed25519 id_ed25519; do
        [ -f "$NERONET_LAB/$key" ] || ssh-keygen -q -t ed25519 -N '' -C "neronet-lab-$key" -f "$NERONET_LAB/$key"
    done
    install -d -o "$NERONET_LAB_USER" -g "$NERONET_LAB_USER" -m 0700 "$home/.ssh"
    key=$(cut -d' ' -f1,2 "$NERONET_LAB/id_ed25519.pub")
    grep -qF "$key" "$home/.ssh/authorized_keys" 2>/dev/null \
        || echo "$key neronet-lab-client" >>"$home/.ssh/authorized_keys"
    chown "$NERONET_LAB_USER:" "$home/.ssh/authorized_keys"
    chmod 0600 "$home/.ssh/authorized_keys"

    lab_sshd_config "$NERONET_LAB_PORT" 127.0.0.1 "$NERONET_LAB/sshd.pid" "$NERONET_LAB/host_ed25519" \
        | write_if_changed "$NERONET_LAB/sshd_config" && changed=1
    lab_ssh_config | write_if_changed "$NERONET_LAB/ssh_config" || true
    {
        echo "[127.0.0.1]:$NERONET_LAB_PORT $(cut -d' ' -f1,2 "$NERONET_LAB/host_ed25519.pub")"
        if [ -f "$NERONET_LAB/host2_ed25519.pub" ]; then
            echo "10.77.0.2 $(cut -d' ' -f1,2 "$NERONET_LAB/host2_ed25519.pub")"
        fi
    } | write_if_changed "$NERONET_LAB/known_hosts" || true
    if ! pid_alive "$NERONET_LAB/sshd.pid"; then
        state=started
        NERONET_STARTED_SSHD=1
    fi
    start_lab_sshd "$NERONET_LAB/sshd_config" "$NERONET_LAB/sshd.pid" "$NERONET_LAB/sshd.log" "$changed" \
        || return 1
    wait_for 5 "ssh -F $NERONET_LAB/ssh_config nerolab true" || {
        echo "ssh to nerolab fails:" >&2
        ssh -F "$NERONET_LAB/ssh_config" nerolab true 2>&1 | tail -5 >&2
        tail -5 "$NERONET_LAB/sshd.log" >&2
        return 1
    }
    echo "sshd for $NERONET_LAB_USER on 127.0.0.1:$NERONET_LAB_PORT ($state, ready in $(since "$t0") s): ssh -F $NERONET_LAB/ssh_config nerolab"
}

stop_sshd_lab() {
    stop_pidfile "$NERONET_LAB/sshd.pid"
    echo "sshd for $NERONET_LAB_USER stopped"
}

# ---------------------------------------------------------------------------------------------
# The second login node: sshd in the network namespace $NERONET_LAB2_NS at 10.77.0.2:22 with its
# own hostname (`unshare --uts`): `ssh -F $NERONET_LAB/ssh_config nerolab2` lands on host `lab2`,
# in the same /home/nerolab (one filesystem, as login nodes share home over NFS). As on a
# cluster, login nodes reach each other by hostname with the user's own keys: nerolab's
# ~/.ssh/config names `lab2` (10.77.0.2:22) and this machine's hostname (10.77.0.1:2222: a third
# sshd here, since lab2 cannot reach this machine's 127.0.0.1).

nerolab_ssh_config() { # HOME THIS_HOST_NAMES...
    local home=$1
    shift
    cat <<EOF
# neronet test lab (scripts/services.sh need_login2): the login nodes reach each other by name.
Host $NERONET_LAB2_HOST
  HostName 10.77.0.2
  Port 22
Host $*
  HostName 10.77.0.1
  Port 2222
Host $NERONET_LAB2_HOST $*
  User $NERONET_LAB_USER
  IdentityFile $home/.ssh/id_ed25519
  IdentitiesOnly yes
  BatchMode yes
  StrictHostKeyChecking yes
  UserKnownHostsFile $home/.ssh/known_hosts_neronet
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
# end of neronet test lab
EOF
}

need_login2() {
    local t0 home ns=$NERONET_LAB2_NS changed=0 names key here there
    t0=$(date +%s%N)
    [ -f "$NERONET_LAB/sshd_config" ] || { echo "need_login2: run need_sshd_lab first" >&2; return 1; }
    if ! command -v ip >/dev/null 2>&1; then
        quietly /tmp/neronet-apt-iproute2.log apt_install iproute2 || return 1
    fi
    home=$(getent passwd "$NERONET_LAB_USER" | cut -d: -f6)
    [ -f "$NERONET_LAB/host2_ed25519" ] \
        || ssh-keygen -q -t ed25519 -N '' -C neronet-lab2-host -f "$NERONET_LAB/host2_ed25519"
    # The link: veth-nl0 (10.77.0.1, here) <-> veth-nl1 (10.77.0.2, in the namespace).
    if ! ip netns exec "$ns" true 2>/dev/null; then
        ip netns add "$ns"
        NERONET_STARTED_LOGIN2=1
    fi
    if ! ip link show veth-nl0 >/dev/null 2>&1; then
        ip link add veth-nl0 type veth peer name veth-nl1
        ip link set veth-nl1 netns "$ns"
        ip addr add 10.77.0.1/24 dev veth-nl0
        ip link set veth-nl0 up
        ip netns exec "$ns" ip addr add 10.77.0.2/24 dev veth-nl1
        ip netns exec "$ns" ip link set veth-nl1 up
        ip netns exec "$ns" ip link set lo up
        NERONET_STARTED_LOGIN2=1
    fi
    lab_sshd_config 22 10.77.0.2 "$NERONET_LAB/sshd2.pid" "$NERONET_LAB/host2_ed25519" \
        | write_if_changed "$NERONET_LAB/sshd2_config" && changed=1
    pid_alive "$NERONET_LAB/sshd2.pid" || NERONET_STARTED_LOGIN2=1
    # In its own UTS namespace, where `hostname` says lab2.
    start_lab_sshd "$NERONET_LAB/sshd2_config" "$NERONET_LAB/sshd2.pid" "$NERONET_LAB/sshd2.log" "$changed" \
        ip netns exec "$ns" unshare --uts sh -c "hostname $NERONET_LAB2_HOST && exec \"\$@\"" sh || return 1
    # This machine as lab2 sees it.
    changed=0
    lab_sshd_config 2222 10.77.0.1 "$NERONET_LAB/sshd-hop.pid" "$NERONET_LAB/host_ed25519" \
        | write_if_changed "$NERONET_LAB/sshd-hop_config" && changed=1
    start_lab_sshd "$NERONET_LAB/sshd-hop_config" "$NERONET_LAB/sshd-hop.pid" "$NERONET_LAB/sshd-hop.log" "$changed" \
        || return 1
    # The test side's known_hosts gains lab2's key.
    need_sshd_lab >/dev/null || return 1
    # nerolab's own key and config, for the hop between login nodes.
    if [ ! -f "$home/.ssh/id_ed25519" ]; then
        runuser -u "$NERONET_LAB_USER" -- ssh-keygen -q -t ed25519 -N '' -C nerolab-login-nodes -f "$home/.ssh/id_ed25519"
    fi
    key=$(cut -d' ' -f1,2 "$home/.ssh/id_ed25519.pub")
    grep -qF "$key" "$home/.ssh/authorized_keys" || echo "$key nerolab-login-nodes" >>"$home/.ssh/authorized_keys"
    names=$(hostname)
    [ "$(hostname -s)" = "$names" ] || names="$names $(hostname -s)"
    {
        if [ -f "$home/.ssh/config" ]; then
            sed '/^# neronet test lab/,/^# end of neronet test lab/d' "$home/.ssh/config"
        fi
        # shellcheck disable=SC2086 # one word per name
        nerolab_ssh_config "$home" $names
    } | write_if_changed "$home/.ssh/config" 0600 || true
    {
        echo "10.77.0.2 $(cut -d' ' -f1,2 "$NERONET_LAB/host2_ed25519.pub")"
        echo "[10.77.0.1]:2222 $(cut -d' ' -f1,2 "$NERONET_LAB/host_ed25519.pub")"
    } | write_if_changed "$home/.ssh/known_hosts_neronet" 0600 || true
    chown "$NERONET_LAB_USER:" "$home/.ssh/config" "$home/.ssh/known_hosts_neronet"
    wait_for 5 "ssh -F $NERONET_LAB/ssh_config nerolab2 true" || {
        echo "ssh to nerolab2 fails:" >&2
        ssh -F "$NERONET_LAB/ssh_config" nerolab2 true 2>&1 | tail -5 >&2
        tail -5 "$NERONET_LAB/sshd2.log" >&2
        return 1
    }
    # The hop a bridge makes: each login node reaches the other by its hostname, as nerolab.
    here=$(hostname)
    there=$(ssh -F "$NERONET_LAB/ssh_config" nerolab2 \
        "hostname; ssh $here hostname; ssh $here ssh $NERONET_LAB2_HOST hostname" 2>&1 | tr '\n' ' ')
    [ "$there" = "$NERONET_LAB2_HOST $here $NERONET_LAB2_HOST " ] \
        || { echo "login nodes cannot reach each other by name: $there" >&2; return 1; }
    echo "second login node: nerolab2 = $NERONET_LAB2_HOST at 10.77.0.2 (ready in $(since "$t0") s); there, ssh $here works and back"
}

stop_login2() {
    stop_pidfile "$NERONET_LAB/sshd2.pid"
    stop_pidfile "$NERONET_LAB/sshd-hop.pid"
    ip link del veth-nl0 2>/dev/null || true
    ip netns del "$NERONET_LAB2_NS" 2>/dev/null || true
    echo "second login node stopped"
}

# ---------------------------------------------------------------------------------------------
# Static (musl) builds of neromum and nerokid: what neroman uploads to a cluster.

need_musl() {
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
        echo "== adding the rust target x86_64-unknown-linux-musl"
        quietly /tmp/neronet-rustup-musl.log rustup target add x86_64-unknown-linux-musl || return 1
    fi
    if ! command -v musl-gcc >/dev/null 2>&1; then
        echo "== installing musl-tools"
        quietly /tmp/neronet-apt-musl.log apt_install musl-tools || return 1
    fi
    echo "musl target: ok"
}

stop_services() {
    # LibreOffice runs per conversion (private profiles) and leaves no daemon; stray test agents
    # (neromum) exit on their own when idle, but a finished test run should leave nothing behind.
    pkill -f 'neromum serve --workdir /tmp/neronet-test-' 2>/dev/null || true
    pkill -f 'neromum serve --workdir .*/neronet-test-' 2>/dev/null || true
    # Only what this run started: daemons it found running stay up.
    if [ "${NERONET_STARTED_LOGIN2:-0}" = 1 ]; then stop_login2; fi
    if [ "${NERONET_STARTED_SSHD:-0}" = 1 ]; then stop_sshd_lab; fi
    if [ "${NERONET_STARTED_SLURM:-0}" = 1 ]; then stop_slurm; fi
    if [ "${NERONET_STARTED_SGE:-0}" = 1 ]; then stop_sge; fi
    if [ "${NERONET_STARTED_MUNGE:-0}" = 1 ]; then stop_pidfile /run/munge/munged.pid; fi
}
