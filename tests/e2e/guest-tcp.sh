#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# tests/e2e/guest-tcp.sh - the NVMe/TCP end-to-end suite, run INSIDE the rig's guest with the
# real Linux initiator (nvme-tcp, nvme-cli, fio) against a target reachable at ADDR:PORT.
#
# Normally started by tests/e2e/run.sh, which runs nvmfd on this machine (the guest reaches the
# host's 127.0.0.1 as 10.0.2.2). To prove the suite itself can pass, point it at the kernel's own
# target configured inside the same guest:
#
#   deploy/rig/run-guest.sh tests/e2e/guest-tcp.sh --kernel-target
#
# Options (defaults match run.sh's nvmfd configuration):
#   --addr ADDR               target address (10.0.2.2)
#   --port PORT               target port (4420)
#   --nqn NQN                 subsystem open to any host (nqn.2026-11.io.nvmfd:default)
#   --model MODEL             expected model number (nvmfd)
#   --serial SERIAL           expected serial number (empty: any non-empty serial)
#   --size BYTES              expected namespace 1 size (empty: not checked); at least 132 MiB
#   --restricted-nqn NQN      subsystem with allow_any_host: false (nqn.2026-11.io.nvmfd:restricted;
#                             empty: skip the allow-list steps)
#   --allowed-hostnqn NQN     a host NQN on that subsystem's allow-list (empty: skip that step)
#   --refused-hostnqn NQN     a host NQN not on it (default: a fresh one)
#   --twin-port PORT          a second target at ADDR:PORT serving the same NQN (and serial) with
#                             a different namespace 1; check the kernel does not merge the two into
#                             one multipath namespace (empty: skip that step)
#   --twin-size BYTES         that namespace's size (empty: not checked)
#   --kernel-target           configure the kernel's nvmet in this guest on 127.0.0.1 to match the
#                             options above, and test against it
#   --metrics-port PORT       nvmfd serves /metrics at ADDR:PORT: check its counters against fio's
#                             own totals (empty: skip that step)
#
# Live reconfiguration steps run when the host side relays RPC calls to nvmfd: run.sh makes
# $RIG_OUT/rpc and answers each request file the guest puts there (see host_rpc below).
#
# Prints "PASS: step" / "FAIL: step - reason" and ends with "guest-tcp: N passed, M failed".
# Results also go to $RIG_OUT/results for the host side. Exit code 0 only if all steps passed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/kernel-nvmet.sh
. "$HERE/lib/kernel-nvmet.sh"

[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me in the guest: deploy/rig/run-guest.sh $0 ..." >&2; exit 2; }

ADDR=10.0.2.2
PORT=4420
NQN=nqn.2026-11.io.nvmfd:default
MODEL=nvmfd
SERIAL=
SIZE=
RNQN=nqn.2026-11.io.nvmfd:restricted
ALLOWED_HOSTNQN=
REFUSED_HOSTNQN=
TWIN_PORT=
TWIN_SIZE=
KERNEL_TARGET=0
METRICS_PORT=
while (($#)); do
    case $1 in
    --addr) ADDR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --nqn) NQN=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --serial) SERIAL=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --restricted-nqn) RNQN=$2; shift 2 ;;
    --allowed-hostnqn) ALLOWED_HOSTNQN=$2; shift 2 ;;
    --refused-hostnqn) REFUSED_HOSTNQN=$2; shift 2 ;;
    --twin-port) TWIN_PORT=$2; shift 2 ;;
    --twin-size) TWIN_SIZE=$2; shift 2 ;;
    --kernel-target) KERNEL_TARGET=1; shift ;;
    --metrics-port) METRICS_PORT=$2; shift 2 ;;
    *) echo "guest-tcp: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n $REFUSED_HOSTNQN ]] || REFUSED_HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$(new_uuid)

MIB=$((1024 * 1024))
# Where each step writes, so no step overwrites what a later one checks. The persistence pattern
# sits at 128 MiB, after the fio regions (0-16, 16-48, 64-128 MiB).
PATTERN_OFF_MIB=128
PATTERN_MIB=4

# Shorter than the defaults (600 s): if the target dies, I/O fails in seconds instead of
# hanging in the multipath queue until the guest's time runs out.
CONNECT_OPTS=(--ctrl-loss-tmo=10 --reconnect-delay=2)
HOST1NQN=$(cat /etc/nvme/hostnqn)
HOST2ID=$(new_uuid)
HOST2NQN=nqn.2014-08.org.nvmexpress:uuid:$HOST2ID

DEV=   # namespace 1's block device (multipath head), set by connect steps
CTRL=  # host 1's controller (nvmeN)
CTRL2= # host 2's controller
NSZE=  # namespace 1's size in blocks, from id-ns

# The whole kernel log goes to the host (the console shows warnings only): it tells what each
# kernel did with the target, e.g. on which identifiers it joined or refused a namespace.
cleanup() {
    nvme disconnect-all >/dev/null 2>&1 || true
    [[ -z ${RIG_OUT:-} ]] || dmesg >"$RIG_OUT/dmesg.log" 2>/dev/null || true
}
trap cleanup EXIT

kmsg_tail() { dmesg | tail -n "${1:-8}" | sed 's/^/    dmesg: /'; }
# load_json ARRAY JSON KEY...: the scalar top-level fields of an nvme-cli JSON object into the
# associative array ARRAY, blanks trimmed; each KEY missing from JSON is set empty (so `set -u`
# does not abort the suite and a check reports it). One jq run: programs start slowly here.
load_json() {
    local -n _into=$1
    local json=$2 k v
    shift 2
    _into=()
    while IFS=$'\t' read -r k v; do
        _into["$k"]=$v
    done < <(jq -r 'to_entries[] | select(.value | type != "array" and type != "object")
        | [.key, (.value | tostring | gsub("^\\s+|\\s+$"; ""))] | @tsv' <<<"$json")
    for k in "$@"; do
        [[ -v _into["$k"] ]] || _into["$k"]=
    done
}

# ---- kernel target (only with --kernel-target) -------------------------------------------------
setup_kernel_target() {
    local dev rdev allowed=()
    [[ -n $SIZE ]] || SIZE=$((256 * MIB))
    [[ -n $SERIAL ]] || SERIAL=NVMFDE2E0001
    dev=$(knvmet_nullb e2e0 $((SIZE / MIB))) || { why "null_blk for $NQN"; return 1; }
    knvmet_subsys "$NQN" "$MODEL" "$SERIAL" 1 || { why "subsystem $NQN"; return 1; }
    knvmet_ns "$NQN" 1 "$dev" || { why "namespace on $dev"; return 1; }
    local nqns=("$NQN")
    if [[ -n $RNQN ]]; then
        rdev=$(knvmet_nullb e2e1 16) || { why "null_blk for $RNQN"; return 1; }
        [[ -n $ALLOWED_HOSTNQN ]] || ALLOWED_HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$(new_uuid)
        allowed=("$ALLOWED_HOSTNQN")
        knvmet_subsys "$RNQN" "$MODEL" NVMFDE2E0002 0 "${allowed[@]}" ||
            { why "subsystem $RNQN"; return 1; }
        knvmet_ns "$RNQN" 1 "$rdev" || { why "namespace on $rdev"; return 1; }
        nqns+=("$RNQN")
    fi
    ADDR=127.0.0.1
    knvmet_port 1 tcp "$ADDR" "$PORT" "${nqns[@]}" || { why "tcp port $ADDR:$PORT"; return 1; }
}

# ---- discovery and connect ---------------------------------------------------------------------
discover() {
    local out rec
    out=$(timeout 120 nvme discover -t tcp -a "$ADDR" -s "$PORT" -o json) ||
        { why "nvme discover -t tcp -a $ADDR -s $PORT failed"; kmsg_tail; return 1; }
    jq -r '.records[] | "    \(.subtype): \(.subnqn) \(.trtype) \(.traddr):\(.trsvcid)"' <<<"$out"
    rec=$(jq -c --arg n "$NQN" '[.records[] | select(.subnqn == $n)] | first // empty' <<<"$out")
    [[ -n $rec ]] || { why "discovery log does not list $NQN"; return 1; }
    local -A r
    load_json r "$rec" trtype trsvcid subtype
    [[ ${r[trtype]} == tcp ]] || { why "$NQN listed with trtype ${r[trtype]}"; return 1; }
    [[ ${r[trsvcid]} == "$PORT" ]] || { why "$NQN listed with trsvcid ${r[trsvcid]}, want $PORT"; return 1; }
    [[ ${r[subtype]} == "nvme subsystem" ]] || { why "$NQN listed with subtype ${r[subtype]}"; return 1; }
}

connect_host1() {
    timeout 120 nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" "${CONNECT_OPTS[@]}" ||
        { why "nvme connect -n $NQN failed"; kmsg_tail; return 1; }
    wait_for 20 has_nsdev "$NQN" || { why "no block device for namespace 1 after 20s"; kmsg_tail; return 1; }
    DEV=$(nsdev_for "$NQN")
    CTRL=$(ctrls_for "$NQN" "$HOST1NQN" | head -n 1)
    [[ -n $CTRL ]] || { why "no controller with host NQN $HOST1NQN"; return 1; }
    note "controller $CTRL ($(cat "/sys/class/nvme/$CTRL/address")), namespace $DEV"
}

# ---- identify ----------------------------------------------------------------------------------
list() {
    local out dev
    nvme list || { why "nvme list failed"; return 1; }
    out=$(nvme list -o json) || { why "nvme list -o json failed"; return 1; }
    dev=$(jq -c --arg d "$DEV" '[.Devices[] | select(.DevicePath == $d)] | first // empty' <<<"$out")
    [[ -n $dev ]] || { why "nvme list does not show $DEV"; return 1; }
    local -A d
    load_json d "$dev" ModelNumber SerialNumber PhysicalSize
    [[ ${d[ModelNumber]} == "$MODEL" ]] || { why "model '${d[ModelNumber]}', want '$MODEL'"; return 1; }
    if [[ -n $SERIAL ]]; then
        [[ ${d[SerialNumber]} == "$SERIAL" ]] || { why "serial '${d[SerialNumber]}', want '$SERIAL'"; return 1; }
    else
        [[ -n ${d[SerialNumber]} ]] || { why "empty serial number"; return 1; }
    fi
    if [[ -n $SIZE ]]; then
        [[ ${d[PhysicalSize]} == "$SIZE" ]] || { why "size ${d[PhysicalSize]}, want $SIZE"; return 1; }
    fi
}

id_ctrl() {
    local j
    local -A c
    j=$(nvme id-ctrl "/dev/$CTRL" -o json) || { why "nvme id-ctrl /dev/$CTRL failed"; return 1; }
    load_json c "$j" mn sn fr cntlid ver mdts nn cmic ioccsz iorcsz maxcmd kas subnqn sqes cqes
    note "mn='${c[mn]}' sn='${c[sn]}' fr='${c[fr]}' cntlid=${c[cntlid]}" \
        "ver=$(printf '%#x' "${c[ver]}") mdts=${c[mdts]} nn=${c[nn]} cmic=${c[cmic]}" \
        "ioccsz=${c[ioccsz]} iorcsz=${c[iorcsz]} maxcmd=${c[maxcmd]} kas=${c[kas]}"
    [[ ${c[mn]} == "$MODEL" ]] || { why "mn '${c[mn]}', want '$MODEL'"; return 1; }
    [[ -z $SERIAL || ${c[sn]} == "$SERIAL" ]] || { why "sn '${c[sn]}', want '$SERIAL'"; return 1; }
    [[ ${c[subnqn]} == "$NQN" ]] || { why "subnqn '${c[subnqn]}', want '$NQN'"; return 1; }
    ((c[nn] >= 1)) || { why "nn ${c[nn]}: no namespaces allowed"; return 1; }
    # NVMe-oF: 64-byte SQEs and 16-byte CQEs, I/O command capsules of at least 64 bytes (4 x 16)
    # and responses of at least 16 bytes; a version of 1.2.1 or later.
    ((c[sqes] == 0x66)) || { why "sqes ${c[sqes]}, want 0x66"; return 1; }
    ((c[cqes] == 0x44)) || { why "cqes ${c[cqes]}, want 0x44"; return 1; }
    ((c[ioccsz] >= 4)) || { why "ioccsz ${c[ioccsz]} < 4"; return 1; }
    ((c[iorcsz] >= 1)) || { why "iorcsz ${c[iorcsz]} < 1"; return 1; }
    ((c[ver] >= 0x10201)) || { why "version $(printf '%#x' "${c[ver]}") < 1.2.1"; return 1; }
    [[ ${c[cntlid]} == "$(cat "/sys/class/nvme/$CTRL/cntlid")" ]] ||
        { why "cntlid ${c[cntlid]} differs from the connect's"; return 1; }
}

id_ns() {
    local j ds bytes bdev
    local -A n
    j=$(nvme id-ns "$DEV" -o json) || { why "nvme id-ns $DEV failed"; return 1; }
    load_json n "$j" nsze ncap nuse flbas nmic nguid eui64
    ds=$(jq -r --argjson i $((n[flbas] & 0xf)) '.lbafs[$i].ds' <<<"$j")
    note "nsze=${n[nsze]} ncap=${n[ncap]} nuse=${n[nuse]} flbas=${n[flbas]} lbads=$ds" \
        "nmic=${n[nmic]} nguid=${n[nguid]} eui64=${n[eui64]}"
    ((n[nsze] > 0)) || { why "nsze 0"; return 1; }
    ((n[ncap] <= n[nsze])) || { why "ncap ${n[ncap]} > nsze ${n[nsze]}"; return 1; }
    ((ds >= 9 && ds <= 16)) || { why "LBA data size 2^$ds is not 512 B..64 KiB"; return 1; }
    bytes=$((n[nsze] << ds))
    bdev=$(blockdev --getsize64 "$DEV") || { why "blockdev --getsize64 $DEV"; return 1; }
    ((bytes == bdev)) || { why "nsze x block = $bytes but the kernel sized $DEV at $bdev"; return 1; }
    if [[ -n $SIZE ]]; then
        ((bytes == SIZE)) || { why "namespace is $bytes bytes, want $SIZE"; return 1; }
    fi
    ((bytes >= (PATTERN_OFF_MIB + PATTERN_MIB) * MIB)) ||
        { why "namespace of $bytes bytes is too small for this suite (132 MiB)"; return 1; }
    NSZE=${n[nsze]}
}

# ---- data --------------------------------------------------------------------------------------
# fio_verify NAME RW BS OFFSET SIZE IODEPTH [DEVICE]: write, then read back and check crc32c.
fio_verify() {
    local name=$1 log=/tmp/fio-$1.log
    timeout 600 fio --name="$name" --filename="${7:-$DEV}" --allow_file_create=0 \
        --direct=1 --ioengine=libaio \
        --rw="$2" --bs="$3" --offset="$4" --size="$5" --iodepth="$6" \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
        --eta=never --output="$log" ||
        { why "fio $name failed (rc $?)"; cat "$log"; kmsg_tail; return 1; }
    grep -E '^ *(read|write):' "$log"
    grep -q 'err= 0' "$log" || { why "fio $name reported errors"; cat "$log"; return 1; }
}

# ---- metrics -----------------------------------------------------------------------------------
# scrape_sum FILE OPCODE KIND: the sum of nvmfd_KIND_total (commands or bytes) for namespace 1 of
# $NQN and OPCODE over every transport, from a saved /metrics scrape.
scrape_sum() {
    awk -v p="nvmfd_$3_total{subsystem=\"$NQN\",nsid=\"1\"," -v op="opcode=\"$2\"}" '
        index($0, p) == 1 && index($0, op) { s += $NF } END { printf "%.0f\n", s }' "$1"
}
# within_pct A B PCT: |A - B| <= PCT % of B (and B > 0).
within_pct() { (($2 > 0)) && ((($1 > $2 ? $1 - $2 : $2 - $1) * 100 <= $3 * $2)); }
# A fio job between two scrapes of nvmfd's /metrics: the counters' growth must match fio's own
# totals (ios and bytes, reads and writes) within 3 % (the kernel may add a few I/Os of its own).
metrics_match_fio() {
    local url=http://$ADDR:$METRICS_PORT/metrics json=/tmp/fio-metrics.json k v d
    curl -fsS --max-time 10 "$url" >/tmp/m0 || { why "cannot scrape $url"; return 1; }
    timeout 300 fio --name=metrics --filename="$DEV" --allow_file_create=0 --direct=1 \
        --ioengine=libaio --rw=randrw \
        --rwmixread=70 --bs=4k --offset=0 --size=16M --iodepth=16 --eta=never \
        --output-format=json --output="$json" || { why "fio failed (rc $?)"; kmsg_tail; return 1; }
    curl -fsS --max-time 10 "$url" >/tmp/m1 || { why "cannot scrape $url after fio"; return 1; }
    declare -A fio=(
        [read_commands]=$(jq '[.jobs[].read.total_ios] | add' "$json")
        [read_bytes]=$(jq '[.jobs[].read.io_bytes] | add' "$json")
        [write_commands]=$(jq '[.jobs[].write.total_ios] | add' "$json")
        [write_bytes]=$(jq '[.jobs[].write.io_bytes] | add' "$json")
    )
    local rc=0 line=
    for k in read_commands read_bytes write_commands write_bytes; do
        d=$(($(scrape_sum /tmp/m1 "${k%_*}" "${k#*_}") - $(scrape_sum /tmp/m0 "${k%_*}" "${k#*_}")))
        v=${fio[$k]}
        line+=" $k: nvmfd $d fio $v;"
        within_pct "$d" "$v" 3 || { why "$k: nvmfd counted $d, fio $v (more than 3 % apart)"; rc=1; }
    done
    note "${line%;}"
    grep -q '^nvmfd_command_latency_seconds_count{subsystem="'"$NQN"'",nsid="1",' /tmp/m1 ||
        { why "no latency histogram for namespace 1"; rc=1; }
    return "$rc"
}

write_pattern() {
    head -c $((PATTERN_MIB * MIB)) /dev/urandom >/tmp/pattern || { why "making the pattern"; return 1; }
    dd if=/tmp/pattern of="$DEV" bs=1M seek="$PATTERN_OFF_MIB" oflag=direct conv=fsync,notrunc \
        status=none || { why "dd write to $DEV failed"; kmsg_tail; return 1; }
    check_pattern || return 1
    note "wrote ${PATTERN_MIB} MiB at ${PATTERN_OFF_MIB} MiB, md5 $(md5sum </tmp/pattern | cut -c1-32)"
}

check_pattern() {
    rm -f /tmp/readback
    dd if="$DEV" of=/tmp/readback bs=1M skip="$PATTERN_OFF_MIB" count="$PATTERN_MIB" \
        iflag=direct status=none || { why "dd read from $DEV failed"; kmsg_tail; return 1; }
    cmp -s /tmp/pattern /tmp/readback || { why "data read back differs from what was written"; return 1; }
}

disconnect_all_of() {
    timeout 120 nvme disconnect -n "$1" || { why "nvme disconnect -n $1 failed"; return 1; }
    wait_for 20 no_ctrls "$1" || { why "controllers of $1 still present 20s after disconnect"; return 1; }
}

reconnect_and_check() {
    connect_host1 || return 1
    check_pattern || return 1
    note "pattern intact after reconnect"
}

# ---- two hosts ---------------------------------------------------------------------------------
connect_host2() {
    local answer c1id c2id
    answer=$(fabrics_connect "nqn=$NQN,transport=tcp,traddr=$ADDR,trsvcid=$PORT,hostnqn=$HOST2NQN,hostid=$HOST2ID,ctrl_loss_tmo=10,reconnect_delay=2") ||
        { why "second host's connect was refused"; kmsg_tail; return 1; }
    note "kernel: $answer"
    CTRL2=$(ctrls_for "$NQN" "$HOST2NQN" | head -n 1)
    [[ -n $CTRL2 ]] || { why "no controller with host NQN $HOST2NQN"; return 1; }
    c1id=$(cat "/sys/class/nvme/$CTRL/cntlid")
    c2id=$(cat "/sys/class/nvme/$CTRL2/cntlid")
    note "host 1: $CTRL cntlid $c1id; host 2: $CTRL2 cntlid $c2id"
    ((c1id != c2id)) || { why "both hosts got controller id $c1id"; return 1; }
    # The kernel attaches host 2's path to the same namespace (multipath): the target must
    # report the namespace as shareable (NMIC) with the same identifiers on both controllers.
    wait_for 20 ns_on_ctrl "$CTRL2" 1 ||
        { why "namespace 1 did not appear under $CTRL2 (NMIC? identifiers?)"; kmsg_tail; return 1; }
    local -A n
    load_json n "$(nvme id-ns "/dev/$CTRL2" -n 1 -o json)" nsze || { why "id-ns through $CTRL2 failed"; return 1; }
    [[ -z $NSZE || ${n[nsze]} == "$NSZE" ]] || { why "host 2 sees nsze ${n[nsze]}, host 1 $NSZE"; return 1; }
}

ns_on_ctrl() {
    local d
    for d in /sys/class/nvme/"$1"/nvme*n*; do
        [[ -e $d/nsid && $(cat "$d/nsid") == "$2" ]] && return 0
    done
    return 1
}

io_both_hosts() {
    local pol a1 a2 b1 b2 rc=0
    pol=$(subsys_dir "$NQN")/iopolicy
    # round-robin sends I/O down both controllers in turn.
    echo round-robin >"$pol" || { why "cannot set iopolicy round-robin"; return 1; }
    a1=$(path_ios "$CTRL" 1)
    a2=$(path_ios "$CTRL2" 1)
    fio_verify twohosts randwrite 4k 48M 8M 8 || rc=1
    echo numa >"$pol" || true
    ((rc == 0)) || return 1
    b1=$(path_ios "$CTRL" 1)
    b2=$(path_ios "$CTRL2" 1)
    note "I/Os through host 1: $((b1 - a1)), host 2: $((b2 - a2))"
    ((b1 > a1)) || { why "no I/O went through host 1's controller"; return 1; }
    ((b2 > a2)) || { why "no I/O went through host 2's controller"; return 1; }
}

host2_gone() { [[ -z $(ctrls_for "$NQN" "$HOST2NQN") ]]; }

disconnect_host2() {
    timeout 120 nvme disconnect -d "$CTRL2" || { why "nvme disconnect -d $CTRL2 failed"; return 1; }
    wait_for 20 host2_gone || { why "$CTRL2 still present"; return 1; }
    [[ -n $(ctrls_for "$NQN" "$HOST1NQN") ]] || { why "host 1's controller went away too"; return 1; }
    check_pattern || return 1
}

# ---- identity: a second target with the same NQN -----------------------------------------------
# Two targets serving the same subsystem NQN with different data (one configuration file deployed
# on two machines) must not look like two paths to one namespace. Linux groups controllers into
# one subsystem by subsystem NQN, then attaches a namespace to an existing multipath head when
# its NSID matches and its identifiers (EUI64, NGUID, UUID) are equal; with different identifiers
# it refuses the namespace ("IDs don't match for shared namespace"). The identifiers are the
# target's promise: NVMe base 2.0 section 4.7.1 (namespace identifiers, including NGUID and UUID,
# "shall" be globally unique and may be used to tell whether two controllers reach the same
# namespace) - two different namespaces must not report the same ones.
TWIN_CTRL=

twin_ctrl_for_port() {
    local c
    for c in $(ctrls_for "$NQN"); do
        [[ ,$(cat "/sys/class/nvme/$c/address" 2>/dev/null), == *,trsvcid=$1,* ]] && { echo "$c"; return 0; }
    done
    return 1
}

# ns_ids CTRL: "NGUID EUI64 UUID" of namespace 1 as the target reports them through controller
# CTRL, in hex ("-" for none): NGUID and EUI64 from Identify Namespace, the UUID from the
# Namespace Identification Descriptor list (CNS 03h), decoded here from its raw bytes: entries of
# NIDT (1 EUI64, 2 NGUID, 3 UUID, 4 CSI), NIDL, two reserved bytes and NIDL bytes of identifier,
# ended by an NIDT of 0 (NVMe base 2.0, Figure 281). The descriptor NGUID/EUI64 must equal the
# Identify Namespace ones.
ns_ids() {
    local j nguid eui uuid=- i t l id
    local -a h=()
    j=$(nvme id-ns "/dev/$1" -n 1 -o json) || return 1
    nguid=$(jq -r '.nguid // "-"' <<<"$j")
    eui=$(jq -r '.eui64 // "-" | if type == "number" then "\(.)" else . end' <<<"$j")
    j=$(nvme ns-descs "/dev/$1" -n 1 -b | od -An -tx1 -v) || return 1
    read -ra h <<<"$(tr -s ' \n' ' ' <<<"$j")"
    ((${#h[@]} >= 4)) || return 1
    for ((i = 0; i + 4 <= ${#h[@]}; i += 4 + l)); do
        t=$((16#${h[i]})) l=$((16#${h[i + 1]}))
        ((t != 0)) || break
        id=$(printf '%s' "${h[@]:i+4:l}")
        case $t in
        2) [[ $id == "$nguid" ]] || { echo "descriptor NGUID $id, Identify Namespace $nguid" >&2; return 1; } ;;
        3) uuid=$id ;;
        esac
    done
    echo "$nguid $eui $uuid"
}

# subsys_of CTRL: the kernel's nvme-subsystem that controller CTRL belongs to.
subsys_of() {
    local s
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [[ -e $s/$1 ]] && { basename "$s"; return 0; }
    done
    echo "no subsystem"
}

zero_id() { [[ $1 == - || $1 =~ ^[0:-]+$ ]]; }

# The kernel is done with the twin's namespace 1: it attached it (a path appeared under the twin's
# controller) or logged why not.
twin_ns_settled() {
    ns_on_ctrl "$TWIN_CTRL" 1 && return 0
    dmesg | tail -n 20 | grep -qE "$TWIN_CTRL: .*(IDs don't match|[Dd]uplicate|shared namespace|nsid 1)"
}

twin_not_merged() {
    local ids_a ids_b a b path head nsb i
    local -a problems=()
    timeout 120 nvme connect -t tcp -a "$ADDR" -s "$TWIN_PORT" -n "$NQN" "${CONNECT_OPTS[@]}" ||
        { why "nvme connect to the twin at $ADDR:$TWIN_PORT failed"; kmsg_tail; return 1; }
    TWIN_CTRL=$(twin_ctrl_for_port "$TWIN_PORT") ||
        { why "no controller for $NQN at port $TWIN_PORT"; kmsg_tail; return 1; }
    note "first target: $CTRL cntlid $(cat "/sys/class/nvme/$CTRL/cntlid") in $(subsys_of "$CTRL");" \
        "twin: $TWIN_CTRL cntlid $(cat "/sys/class/nvme/$TWIN_CTRL/cntlid") in $(subsys_of "$TWIN_CTRL")"
    # Namespace scanning runs after the connect returns.
    wait_for 15 twin_ns_settled || note "the kernel said nothing about the twin's namespace in 15s"
    kmsg_tail 4
    nvme list-subsys 2>&1 | sed 's/^/    /'

    # 1. What the targets report: both namespaces 1 must have different identifiers.
    ids_a=$(ns_ids "$CTRL") || { why "identifiers of namespace 1 through $CTRL"; return 1; }
    ids_b=$(ns_ids "$TWIN_CTRL") || { why "identifiers of namespace 1 through $TWIN_CTRL"; return 1; }
    note "first target: nguid eui64 uuid = $ids_a"
    note "twin target:  nguid eui64 uuid = $ids_b"
    read -ra a <<<"$ids_a"
    read -ra b <<<"$ids_b"
    for i in 0 1 2; do
        if ! zero_id "${a[i]}" && [[ ${a[i]} == "${b[i]}" ]]; then
            problems+=("both targets report $(cut -d' ' -f$((i + 1)) <<<"nguid eui64 uuid") ${a[i]} for different namespaces")
        fi
    done
    if [[ -n $TWIN_SIZE ]]; then
        local -A n
        load_json n "$(nvme id-ns "/dev/$TWIN_CTRL" -n 1 -o json)" nsze flbas
        ((n[nsze] << 12 == TWIN_SIZE)) || note "twin nsze ${n[nsze]} (want $((TWIN_SIZE >> 12)) 4 KiB blocks)"
    fi

    # 2. What the kernel made of it: the twin's namespace must not be a path of $DEV's head.
    for path in /sys/class/nvme/"$TWIN_CTRL"/nvme*n*; do
        [[ -e $path/nsid && $(cat "$path/nsid") == 1 ]] || continue
        nsb=$(basename "$path")
        # Native multipath: the path nvmeXcYnZ belongs to head nvmeXnZ; without it the
        # controller's own nvmeYnZ is the block device.
        head=/dev/${nsb/c[0-9]*n/n}
        note "twin namespace 1: $nsb (block device $head)"
        if [[ $head == "$DEV" ]]; then
            problems+=("the kernel merged the twin's namespace 1 into $DEV: two paths ($CTRL, $TWIN_CTRL) to different data")
        fi
    done
    if ! ns_on_ctrl "$TWIN_CTRL" 1; then
        note "the kernel attached no namespace 1 through $TWIN_CTRL (refused as a different namespace)"
    fi
    # 3. The first target's data still reads back through $DEV (a merged head may even have
    # taken the twin's size).
    check_pattern || problems+=("$E2E_WHY")
    if ((${#problems[@]})); then
        why "$(printf '%s; ' "${problems[@]}" | sed 's/; $//')"
        return 1
    fi
    note "not merged: different identifiers, $DEV reaches the first target only"
}

twin_gone() { ! twin_ctrl_for_port "$TWIN_PORT" >/dev/null; }

disconnect_twin() {
    [[ -n $TWIN_CTRL ]] || return 0
    timeout 120 nvme disconnect -d "$TWIN_CTRL" || { why "nvme disconnect -d $TWIN_CTRL failed"; return 1; }
    wait_for 20 twin_gone || { why "$TWIN_CTRL still present"; return 1; }
    [[ -n $(ctrls_for "$NQN" "$HOST1NQN") ]] || { why "host 1's controller went away too"; return 1; }
    TWIN_CTRL=
}

# ---- refusals ----------------------------------------------------------------------------------
unknown_nqn() {
    local bad=nqn.2026-11.io.nvmfd:e2e-no-such-subsystem
    if timeout 120 nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$bad" "${CONNECT_OPTS[@]}"; then
        why "connect to unknown $bad succeeded"
        nvme disconnect -n "$bad" || true
        return 1
    fi
    no_ctrls "$bad" || { why "a controller for $bad exists"; return 1; }
    kmsg_tail 2
}

refused_host() {
    if timeout 120 nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$RNQN" "${CONNECT_OPTS[@]}" \
        --hostnqn="$REFUSED_HOSTNQN" --hostid="$(new_uuid)"; then
        why "host $REFUSED_HOSTNQN, not on the allow-list, was let in"
        nvme disconnect -n "$RNQN" || true
        return 1
    fi
    no_ctrls "$RNQN" || { why "a controller for $RNQN exists"; return 1; }
    kmsg_tail 2
    note "refused as expected: $REFUSED_HOSTNQN"
}

allowed_host() {
    timeout 120 nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$RNQN" "${CONNECT_OPTS[@]}" \
        --hostnqn="$ALLOWED_HOSTNQN" --hostid="$(new_uuid)" ||
        { why "host $ALLOWED_HOSTNQN on the allow-list was refused"; kmsg_tail; return 1; }
    wait_for 20 has_nsdev "$RNQN" || { why "no namespace for $RNQN after 20s"; return 1; }
    note "$(nsdev_for "$RNQN") via $(ctrls_for "$RNQN")"
    disconnect_all_of "$RNQN"
}

# ---- live reconfiguration (nvmfd's JSON-RPC, relayed by the host side) ------------------------
RPC_N=0
have_rpc() { [[ -n ${RIG_OUT:-} && -d $RIG_OUT/rpc && ! -e $RIG_OUT/rpc/.closed ]]; }
# host_rpc METHOD JSON: ask the host side to call METHOD with JSON params on nvmfd's socket; prints
# the answer, returns the call's exit status (the host runs `nvmfd rpc -o json`).
host_rpc() {
    local id i
    RPC_N=$((RPC_N + 1))
    id=$RIG_OUT/rpc/$RPC_N-$$
    printf '%s\n%s\n' "$1" "$2" >"$id.tmp" && mv "$id.tmp" "$id.req" || return 1
    for ((i = 0; i < 150; i++)); do
        if [[ -e $id.rc ]]; then
            cat "$id.out"
            return "$(cat "$id.rc")"
        fi
        sleep 0.2
    done
    echo "no answer from the host's RPC relay after 30s" >&2
    return 1
}
ns2_listed() {
    nvme list -o json 2>/dev/null | jq -e --arg d "$1" '.Devices[] | select(.DevicePath == $d)' >/dev/null
}
ns2_gone() { ! has_nsdev "$NQN" 2 && ! ns2_listed "$1"; }
# While fio verifies namespace 1, namespace 2 is added by RPC: the kernel sees it through the
# Namespace Attribute Changed event (no reconnect: same controller, same cntlid), fio on it
# verifies, it is removed again and disappears; fio on namespace 1 never sees an error.
# more_live_runs N: namespace 1's fio loop finished more than N runs, or failed.
more_live_runs() { (($(cat /tmp/live-runs 2>/dev/null || echo 0) > $1)) || [[ -e /tmp/live-failed ]]; }
live_namespace() {
    local cntlid lpid dev2 rc=0 runs
    cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid")
    rm -f /tmp/live-stop /tmp/live-failed /tmp/live-runs
    # Namespace 1: verified fio runs back to back until told to stop; the first failure ends the
    # loop and is kept.
    (
        n=0
        while [[ ! -e /tmp/live-stop ]]; do
            if ! timeout 300 fio --name=live-ns1 --filename="$DEV" --allow_file_create=0 \
                --direct=1 --ioengine=libaio \
                --rw=randwrite --bs=4k --offset=0 --size=2M --iodepth=16 --verify=crc32c \
                --do_verify=1 --verify_fatal=1 --verify_state_save=0 --eta=never \
                --output=/tmp/fio-live-ns1.log || ! grep -q 'err= 0' /tmp/fio-live-ns1.log; then
                cp /tmp/fio-live-ns1.log /tmp/live-failed
                break
            fi
            n=$((n + 1))
            echo "$n" >/tmp/live-runs
        done
    ) &
    lpid=$!
    wait_for 120 test -s /tmp/live-runs || { why "no fio run on namespace 1 finished within 120s"; rc=1; }
    ((rc == 0)) && { host_rpc bdev_malloc_create '{"name": "e2e-live", "num_blocks": 8192, "block_size": 4096}' ||
        { why "bdev_malloc_create failed"; rc=1; }; }
    if ((rc == 0)); then
        host_rpc nvmf_subsystem_add_ns "{\"nqn\": \"$NQN\", \"namespace\": {\"bdev_name\": \"e2e-live\", \"nsid\": 2}}" ||
            { why "nvmf_subsystem_add_ns failed"; rc=1; }
    fi
    if ((rc == 0)) && ! wait_for 20 has_nsdev "$NQN" 2; then
        why "namespace 2 did not appear within 20s of nvmf_subsystem_add_ns"; kmsg_tail; rc=1
    fi
    if ((rc == 0)); then
        dev2=$(nsdev_for "$NQN" 2)
        wait_for 10 ns2_listed "$dev2" || { why "nvme list does not show $dev2"; rc=1; }
        nvme list | grep -F "$dev2" || true
        [[ $(cat "/sys/class/nvme/$CTRL/cntlid") == "$cntlid" && $(cat "/sys/class/nvme/$CTRL/state") == live ]] ||
            { why "the controller changed (reconnect?)"; rc=1; }
    fi
    ((rc == 0)) && { fio_verify live-ns2 randwrite 4k 0 4M 8 "$dev2" || rc=1; }
    if ((rc == 0)); then
        host_rpc nvmf_subsystem_remove_ns "{\"nqn\": \"$NQN\", \"nsid\": 2}" ||
            { why "nvmf_subsystem_remove_ns failed"; rc=1; }
        ((rc == 0)) && ! wait_for 20 ns2_gone "$dev2" &&
            { why "namespace 2 still present 20s after nvmf_subsystem_remove_ns"; kmsg_tail; rc=1; }
        host_rpc bdev_malloc_delete '{"name": "e2e-live"}' || { why "bdev_malloc_delete failed"; rc=1; }
    fi
    # One more verified run on namespace 1 after the removal, then stop.
    runs=$(cat /tmp/live-runs 2>/dev/null || echo 0)
    wait_for 120 more_live_runs "$runs" || true
    touch /tmp/live-stop
    wait "$lpid" || true
    if [[ -e /tmp/live-failed ]]; then
        why "fio on namespace 1 failed while namespace 2 came and went"; cat /tmp/live-failed; kmsg_tail; rc=1
    else
        note "namespace 1: $(cat /tmp/live-runs 2>/dev/null || echo 0) verified fio runs, no error"
    fi
    return "$rc"
}
not_live() { [[ -z $(ctrls_for "$RNQN") || $(cat "/sys/class/nvme/$(ctrls_for "$RNQN" | head -n 1)/state" 2>/dev/null) != live ]]; }
# A host taken off the allow-list by RPC is disconnected at once and cannot connect again.
live_remove_host() {
    local rc=0
    timeout 120 nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$RNQN" "${CONNECT_OPTS[@]}" \
        --hostnqn="$ALLOWED_HOSTNQN" --hostid="$(new_uuid)" ||
        { why "host $ALLOWED_HOSTNQN on the allow-list was refused"; kmsg_tail; return 1; }
    wait_for 20 has_nsdev "$RNQN" || { why "no namespace for $RNQN after 20s"; return 1; }
    host_rpc nvmf_subsystem_remove_host "{\"nqn\": \"$RNQN\", \"host\": \"$ALLOWED_HOSTNQN\"}" ||
        { why "nvmf_subsystem_remove_host failed"; rc=1; }
    if ((rc == 0)); then
        wait_for 10 not_live || { why "the removed host's controller is still live after 10s"; rc=1; }
        # Its reconnect attempts are refused until ctrl-loss-tmo (10 s) removes it.
        wait_for 30 no_ctrls "$RNQN" || { why "the removed host's controller still exists after 30s"; rc=1; }
        kmsg_tail 4
    fi
    if ((rc == 0)) && timeout 60 nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$RNQN" "${CONNECT_OPTS[@]}" \
        --hostnqn="$ALLOWED_HOSTNQN" --hostid="$(new_uuid)"; then
        why "the removed host connected again"; rc=1
    fi
    nvme disconnect -n "$RNQN" >/dev/null 2>&1 || true
    host_rpc nvmf_subsystem_add_host "{\"nqn\": \"$RNQN\", \"host\": \"$ALLOWED_HOSTNQN\"}" >/dev/null ||
        { why "nvmf_subsystem_add_host (restoring) failed"; rc=1; }
    return "$rc"
}

final_disconnect() {
    disconnect_all_of "$NQN" || return 1
    [[ -z $(ls /sys/class/nvme 2>/dev/null) ]] || { why "controllers left: $(ls /sys/class/nvme)"; return 1; }
}

# ---- the suite ---------------------------------------------------------------------------------
echo "guest-tcp: target $ADDR:$PORT $NQN; host 1 $HOST1NQN"
if ((KERNEL_TARGET)); then
    run_step "kernel nvmet stand-in target" setup_kernel_target
    echo "guest-tcp: using the kernel target at $ADDR:$PORT"
fi
run_step "discover lists $NQN" discover
run_step "connect host 1" connect_host1
if [[ -n $DEV ]]; then
    run_step "nvme list: model, serial, size" list
    run_step "nvme id-ctrl" id_ctrl
    run_step "nvme id-ns" id_ns
    run_step "fio 4k randwrite crc32c verify" fio_verify rand4k randwrite 4k 0 16M 16
    run_step "fio 128k write crc32c verify" fio_verify seq128k write 128k 16M 32M 8
    run_step "fio 1m write crc32c verify" fio_verify seq1m write 1m 64M 64M 4
    if [[ -n $METRICS_PORT ]]; then
        run_step "metrics: /metrics counters match fio's totals" metrics_match_fio
    fi
    run_step "write a pattern" write_pattern
    run_step "disconnect" disconnect_all_of "$NQN"
    run_step "reconnect; pattern reads back" reconnect_and_check
fi
if [[ -n $DEV && -n $CTRL ]] && have_rpc; then
    run_step "live: namespace 2 added and removed by RPC while fio verifies namespace 1" live_namespace
fi
if [[ -n $DEV && -n $CTRL ]]; then
    run_step "second host connects (own controller, same namespace)" connect_host2
    if [[ -n $CTRL2 ]]; then
        run_step "I/O through both hosts' controllers" io_both_hosts
        run_step "second host disconnects, first keeps its data" disconnect_host2
    fi
fi
run_step "connect to an unknown NQN is refused" unknown_nqn
if [[ -n $RNQN ]]; then
    run_step "host not on the allow-list is refused" refused_host
    if [[ -n $ALLOWED_HOSTNQN ]]; then
        run_step "host on the allow-list connects" allowed_host
        if have_rpc; then
            run_step "live: host removed from the allow-list is disconnected and refused" live_remove_host
        fi
    fi
fi
# Seen on 6.1 and 7.2 alike: with equal identifiers both controllers land in one nvme-subsystem and
# the twin's namespace becomes a second path of the first one's head (which even takes the twin's
# size); with different ones the kernel logs "IDs don't match for shared namespace 1" and attaches
# no namespace through the twin.
if [[ -n $TWIN_PORT && -n $DEV && -n $CTRL ]]; then
    run_step "same NQN, other data at port $TWIN_PORT: not merged into one multipath namespace" twin_not_merged
    run_step "twin disconnects" disconnect_twin
fi
run_step "disconnect everything" final_disconnect
summary guest-tcp
