#!/bin/busybox sh
# shellcheck shell=dash
# /init of the rig's initramfs (built into it by deploy/rig/setup.sh; runs inside the QEMU guest).
#
# Loads the modules listed in /modules/order, mounts this machine's / (9p tag "hostroot") read-only
# as the guest's root with fresh tmpfs on the writable places, brings up the slirp network, then
# chroots and runs the script named on the kernel command line. When it ends, prints
#     NVMFD-GUEST-EXIT=<rc>
# on the console and powers off. run-guest.sh turns that marker back into an exit code.
#
# Kernel command line parameters read here:
#   script=PATH        what to run (a path in the host's file system, run with the host's /bin/sh)
#   rig.hostnqn=NQN    host NQN written to /etc/nvme/hostnqn (default: a fresh uuid-based NQN)
#   rig.hostid=UUID    host id written to /etc/nvme/hostid (default: a fresh uuid)
#   rig.out=PATH       mount the 9p share "rigout" (writable) at PATH, to hand files to the host
#   rig.timeout=SECS   kill the script after SECS seconds (rc 124)
#   rig.printk=N       console log level while the script runs (default 4: warnings and worse)

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

say() { echo "rig-init: $*"; }

# Leave with an exit code: the marker is the contract with run-guest.sh.
finish() {
    sync
    echo
    echo "NVMFD-GUEST-EXIT=$1"
    sleep 0.2   # let the UART drain before the machine disappears
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger   # poweroff -f should not return; be sure anyway
}

# ---- parameters ------------------------------------------------------------------------------
script='' hostnqn='' hostid='' out='' timeout_s=0 printk=4
# shellcheck disable=SC2013  # the command line is a list of words
for arg in $(cat /proc/cmdline); do
    case $arg in
    script=*) script=${arg#script=} ;;
    rig.hostnqn=*) hostnqn=${arg#rig.hostnqn=} ;;
    rig.hostid=*) hostid=${arg#rig.hostid=} ;;
    rig.out=*) out=${arg#rig.out=} ;;
    rig.timeout=*) timeout_s=${arg#rig.timeout=} ;;
    rig.printk=*) printk=${arg#rig.printk=} ;;
    esac
done

# ---- modules ---------------------------------------------------------------------------------
# One line per module in dependency order: "NNN-name.ko [params]". A module may fail to load
# when its CPU feature is missing (e.g. crct10dif-pclmul); the generic fallback follows it.
while read -r file params; do
    # shellcheck disable=SC2086  # params is a list of words
    insmod "/modules/$file" $params 2>/tmp-insmod.err ||
        say "note: insmod $file failed: $(cat /tmp-insmod.err)"
done </modules/order
rm -f /tmp-insmod.err

# ---- root file system ------------------------------------------------------------------------
# msize: bigger 9p messages; cache=loose: the guest caches what it read (binaries, libraries),
# which halves the time tools take to start. The share is read-only and nothing the guest reads
# changes on the host during a run; files to hand back go through the uncached rig.out share.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot; then
    say "cannot mount the host root over 9p (tag hostroot)"
    finish 125
fi
mount -o bind /proc /newroot/proc
mount -o bind /sys /newroot/sys
mount -o bind /dev /newroot/dev
mount -t configfs configfs /newroot/sys/kernel/config
# devtmpfs lacks the links udev would make; bash process substitution needs /dev/fd.
ln -sf /proc/self/fd /newroot/dev/fd
ln -sf /proc/self/fd/0 /newroot/dev/stdin
ln -sf /proc/self/fd/1 /newroot/dev/stdout
ln -sf /proc/self/fd/2 /newroot/dev/stderr
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
# Everything nvme-cli, fio and the shell write to. /etc/nvme hides the host's hostnqn/hostid.
for d in /tmp /run /var/tmp /etc/nvme; do
    if [ -d "/newroot$d" ]; then
        mount -t tmpfs -o mode=0755 tmpfs "/newroot$d"
    else
        say "note: $d does not exist on the host; not writable in the guest"
    fi
done
chmod 1777 /newroot/tmp /newroot/var/tmp
if [ -n "$out" ]; then
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 rigout "/newroot$out" ||
        say "note: cannot mount the output share at $out"
fi

# ---- host identity for nvme-cli ---------------------------------------------------------------
[ -n "$hostid" ] || hostid=$(cat /proc/sys/kernel/random/uuid)
[ -n "$hostnqn" ] || hostnqn="nqn.2014-08.org.nvmexpress:uuid:$hostid"
echo "$hostnqn" >/newroot/etc/nvme/hostnqn
echo "$hostid" >/newroot/etc/nvme/hostid

# ---- network: slirp; the host's 127.0.0.1 is 10.0.2.2 from here --------------------------------
ip link set lo up
if ip link set eth0 up; then
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
else
    say "note: no eth0"
fi

# ---- run the script --------------------------------------------------------------------------
if [ -z "$script" ]; then
    say "no script= on the kernel command line"
    finish 127
fi
if [ ! -e "/newroot$script" ]; then
    say "script not found in the guest: $script"
    finish 127
fi
say "kernel $(uname -r), hostnqn $hostnqn; running $script"
echo "$printk" >/proc/sys/kernel/printk

# A clean environment; HOME is a writable tmpfs. The host's /bin/sh runs the script.
# shellcheck disable=SC2016  # "$0" expands in the chroot's shell
set -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TERM=dumb LANG=C.UTF-8 RIG_GUEST=1 RIG_HOSTNQN="$hostnqn" RIG_HOSTID="$hostid" \
    RIG_OUT="$out" chroot /newroot /bin/sh -c 'cd /tmp && exec "$0"' "$script"
if [ "$timeout_s" -gt 0 ]; then
    timeout -s KILL "$timeout_s" "$@"
    rc=$?
    # busybox timeout reports a killed child as 128+9.
    if [ "$rc" -eq 137 ]; then
        say "script killed after ${timeout_s}s"
        rc=124
    fi
else
    "$@"
    rc=$?
fi

if [ "$rc" -ne 0 ]; then
    echo "rig-init: script exited $rc; last kernel messages:"
    dmesg | tail -n 30
fi
finish "$rc"
