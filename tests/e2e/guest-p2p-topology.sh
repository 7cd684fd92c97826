#!/usr/bin/env bash
# tests/e2e/guest-p2p-topology.sh - INSIDE the nvme-vfio guest (the SSD at $BDF behind the
# emulated switch, an e1000e NIC on the switch's other downstream port, intel_iommu=on):
# `nvmfd topology --json` against the real emulated hierarchy, with config space read here,
# independently of nvmfd. Sourced by tests/e2e/guest-p2p-rdma.sh in the main boot (CPU -cpu max:
# under TCG an AuthenticAMD family 15), and run on its own as the guest script of the short
# boots tests/e2e/nvme-vfio.sh makes with other CPU models (EPYC, an Intel one), which must
# flip or keep the root-bus pair's verdict:
#   1. the SSD's chain of bridges (downstream port, switch upstream port, root port) and each
#      one's PCIe port type, from the sysfs path and the PCI Express capability's type field;
#   2. the ACS capability and Control register of every bridge on that chain and of every switch
#      downstream port, walked here through the extended capabilities (and with setpci
#      ECAP_ACS+6.w where pciutils is installed), must be what nvmfd reports;
#   3. two pairs decided with `--pair`, their verdict and reasons computed here from the
#      registers read in 2, /proc/cpuinfo and Linux's rules (drivers/pci/p2pdma.c):
#      - the SSD and the endpoint on the switch's other downstream port (a real second device:
#        nvme-vfio.sh's e1000e, left without a driver so the shared IOMMU group stays viable
#        for VFIO): the paths meet in the switch upstream port, so the verdict follows from ACS
#        RR/CR/EC on the functions walked (the provider, its downstream port, the upstream
#        port, the client's downstream port, the client) — bus addresses without redirect, at
#        the distance Linux counts (functions below the meeting bridge on both sides), else the
#        acs_redirect finding naming the ports; the link bandwidth nvmfd reports (`gbps`) is
#        checked against sysfs' speed and width;
#      - the SSD and the root-complex NIC (virtio-net, eth0): no common upstream bridge, so the
#        host-bridge rule decides: the root complex (00:00.0) must be on the whitelist or the
#        CPU an AMD Zen (family >= 0x17) for "through the host bridge", else refused
#        (host_bridge_not_whitelisted, no_common_upstream_bridge); the kernel-rule findings and
#        their severities must be exactly those, plus iommu_translation when the NIC's IOMMU
#        group translates;
#   4. with TOPO_WANT_CPU="VENDOR FAMILY" (the short boots): /proc/cpuinfo shows that CPU (the
#      model QEMU was given), and nvmfd's `cpu` agrees.
#   QEMU's xio3130 switch ports and ioh3420 root port have no ACS capability (only AER in
#   their extended space), so Linux has nothing to enable on them even with the IOMMU on; the
#   check asserts what the registers say, whichever it is.
# Under TCG every program started costs (its binary comes over 9p): config space is read once
# per function (od), nvmfd's JSON parsed once per document (jq), the rest is bash.
# Sourced, it needs NVMFD, BDF, run_step/why/note from the caller. Run on its own it takes
# NVMFD_BIN_DIR (and TOPO_BDF, default 0000:03:00.0). TOPO_ROOT (default empty) points the
# reads at a captured tree (sys/, proc/) to try the check outside the guest.

TOPO_STANDALONE=0
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    TOPO_STANDALONE=1
    HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    # shellcheck source=tests/e2e/lib/common.sh
    . "$HERE/lib/common.sh"
    [[ ${RIG_GUEST:-} == 1 || -n ${TOPO_ROOT:-} ]] ||
        { echo "run me through tests/e2e/nvme-vfio.sh (or with TOPO_ROOT)" >&2; exit 2; }
    NVMFD=${NVMFD_BIN_DIR:?}/nvmfd
    BDF=${TOPO_BDF:-0000:03:00.0}
fi

TOPO_ROOT=${TOPO_ROOT:-}
TOPO_JSON=/tmp/nvmfd-topology.json
TOPO_TAB=/tmp/nvmfd-topology.tab
declare -A TOPO_CFG_ACS=()  # bdf -> "absent" or "present OFFSET CAP CTRL" (decimal)
declare -A TOPO_DIRS=() TOPO_CFG_TEXT=()
# nvmfd's view, from one jq pass over its JSON: bdf -> port type, parent, ACS ("absent",
# "unreadable" or "present OFFSET CAP CTRL"), current link's gbps in millionths ("null").
declare -A NV_PT=() NV_PARENT=() NV_ACS=() NV_GBPS=()
NV_CPU='' NV_DN=''

topo_bdf_re='^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$'

# topo_dir BDF: the function's sysfs directory (cached; `cd -P` resolves the link in bash).
topo_dir() {
    if [[ -z ${TOPO_DIRS[$1]:-} ]]; then
        local d
        if [[ -e $TOPO_ROOT/sys/bus/pci/devices/$1 ]]; then
            d=$(cd -P "$TOPO_ROOT/sys/bus/pci/devices/$1" 2>/dev/null && pwd)
        else
            d=$(find "$TOPO_ROOT/sys/devices" -maxdepth 8 -type d -name "$1" -print -quit)
        fi
        [[ -n $d ]] || return 1
        TOPO_DIRS[$1]=$d
    fi
    echo "${TOPO_DIRS[$1]}"
}

# topo_cfg BDF: config space bytes as decimal numbers into TOPO_B (as many as sysfs shows),
# read once per function.
topo_cfg() {
    if [[ -z ${TOPO_CFG_TEXT[$1]:-} ]]; then
        local d
        d=$(topo_dir "$1")
        [[ -n $d && -r $d/config ]] || return 1
        TOPO_CFG_TEXT[$1]=$(od -An -v -tu1 "$d/config")
        [[ -n ${TOPO_CFG_TEXT[$1]} ]] || return 1
    fi
    # Split in memory: `read` from a here-string takes the 16 KiB one byte per system call,
    # seconds under TCG.
    # shellcheck disable=SC2206  # numbers only: word splitting is the point
    TOPO_B=(${TOPO_CFG_TEXT[$1]})
}

topo_w16() { echo $((TOPO_B[$1] | TOPO_B[$1 + 1] << 8)); }
topo_w32() { echo $((TOPO_B[$1] | TOPO_B[$1 + 1] << 8 | TOPO_B[$1 + 2] << 16 | TOPO_B[$1 + 3] << 24)); }

# topo_port_type: the port type of the function in TOPO_B, by nvmfd's names, into TOPO_PT
# ("" without a PCI Express capability). Capability list from 0x34 (Status bit 4), PCIe
# capability ID 0x10, device/port type in bits 7:4 of its Capabilities register (PCIe base
# 6.0, 7.5.3.2).
topo_port_type() {
    TOPO_PT=
    (((TOPO_B[6] | TOPO_B[7] << 8) & 0x10)) || return 0
    local p=$((TOPO_B[0x34] & 0xfc)) n=0
    while ((p >= 0x40 && n++ < 48)); do
        if ((TOPO_B[p] == 0x10)); then
            local names=(endpoint legacy_endpoint reserved reserved root_port switch_upstream
                switch_downstream pcie_to_pci_bridge pci_to_pcie_bridge rc_integrated_endpoint
                rc_event_collector)
            TOPO_PT=${names[$((TOPO_B[p + 2] >> 4 & 0xf))]:-reserved}
            return 0
        fi
        p=$((TOPO_B[p + 1] & 0xfc))
    done
}

# topo_acs: the ACS extended capability (ID 0x000d) of the function in TOPO_B, into TOPO_ACS:
# "absent", "unreadable" or "present OFFSET CAPABILITY CONTROL" (Capability at +4, Control at
# +6; PCIe base 6.0, 7.7.11). Extended capabilities start at 0x100, each header's next pointer
# in bits 31:20.
topo_acs() {
    TOPO_ACS=unreadable
    ((${#TOPO_B[@]} >= 4096)) || return 0
    local p=256 n=0 h
    TOPO_ACS=absent
    while ((p >= 256 && n++ < 512)); do
        h=$((TOPO_B[p] | TOPO_B[p + 1] << 8 | TOPO_B[p + 2] << 16 | TOPO_B[p + 3] << 24))
        ((h == 0 || h == 0xffffffff)) && break
        if (((h & 0xffff) == 0x000d)); then
            TOPO_ACS="present $p $((TOPO_B[p + 4] | TOPO_B[p + 5] << 8)) $((TOPO_B[p + 6] | TOPO_B[p + 7] << 8))"
            return 0
        fi
        p=$((h >> 20 & 0xffc))
    done
}

# topo_chain [BDF]: the functions from BDF (default the SSD) up to the root bus, from the sysfs
# path.
topo_chain() {
    local d
    d=$(topo_dir "${1:-$BDF}") || return 1
    local part out=()
    IFS=/ read -ra part <<<"${d#"$TOPO_ROOT"/sys/devices/}"
    for part in "${part[@]}"; do
        [[ $part =~ $topo_bdf_re ]] && out=("$part" "${out[@]}")
    done
    echo "${out[@]}"
}

topo_nvmfd() {
    if [[ -n $TOPO_ROOT ]]; then
        "$NVMFD" topology --sysfs-root "$TOPO_ROOT/sys" --proc-root "$TOPO_ROOT/proc" "$@"
    else
        "$NVMFD" topology "$@"
    fi
}

# topo_cpuinfo: the first processor's vendor_id, cpu family and model name into CPU_VENDOR,
# CPU_FAMILY, CPU_MODEL (the processor the kernel's p2pdma code asks, boot_cpu_data).
topo_cpuinfo() {
    CPU_VENDOR='' CPU_FAMILY='' CPU_MODEL=''
    local k v
    while IFS=: read -r k v; do
        k=${k%"${k##*[![:space:]]}"} v=${v#"${v%%[![:space:]]*}"}
        case $k in
        vendor_id) CPU_VENDOR=$v ;;
        "cpu family") CPU_FAMILY=$v ;;
        "model name") CPU_MODEL=$v ;;
        "") [[ -n $CPU_VENDOR ]] && break ;;
        esac
    done <"$TOPO_ROOT/proc/cpuinfo"
}

topo_tree() {
    topo_nvmfd --json >"$TOPO_JSON" || { why "nvmfd topology --json failed"; return 1; }
    # nvmfd's view in one pass.
    local b pt parent acs g
    jq -r '
        (.topology.functions[] | [.bdf, (.port_type // "none"), (.parent // "none"),
            (.acs | if .state == "present" then "present \(.offset) \(.capability) \(.control)" else .state end),
            (.current_link.gbps | if . == null then "null" else . * 1000000 | round | tostring end)] | join("|")),
        "cpu|\(.topology.cpu.vendor_id) \(.topology.cpu.family)"' "$TOPO_JSON" >"$TOPO_TAB" ||
        { why "jq cannot read nvmfd's JSON"; return 1; }
    while IFS='|' read -r b pt parent acs g; do
        if [[ $b == cpu ]]; then
            NV_CPU=$pt
            continue
        fi
        NV_PT[$b]=$pt NV_PARENT[$b]=$parent NV_ACS[$b]=$acs NV_GBPS[$b]=$g
        [[ $pt == switch_downstream ]] && NV_DN+=" $b"
    done <"$TOPO_TAB" # a file: bash reads a pipe (and a here-string) a byte per system call
    local -a chain
    read -ra chain <<<"$(topo_chain)"
    ((${#chain[@]} >= 4)) || { why "the SSD's sysfs path has ${#chain[@]} functions (${chain[*]}), want the SSD, 2 switch ports and a root port"; return 1; }
    note "sysfs chain: ${chain[*]}"
    local want=(endpoint switch_downstream switch_upstream root_port) i
    for i in 0 1 2 3; do
        b=${chain[i]}
        topo_cfg "$b" || { why "cannot read $b's config space"; return 1; }
        topo_port_type
        [[ $TOPO_PT == "${want[i]}" ]] || { why "$b's PCIe capability says port type '$TOPO_PT', the rig has ${want[i]} there"; return 1; }
        [[ ${NV_PT[$b]:-} == "$TOPO_PT" ]] || { why "nvmfd says $b is a '${NV_PT[$b]:-}', its config space says $TOPO_PT"; return 1; }
        [[ ${NV_PARENT[$b]:-} == "${chain[i + 1]:-none}" ]] || { why "nvmfd gives $b the parent ${NV_PARENT[$b]:-}, sysfs ${chain[i + 1]:-none}"; return 1; }
    done
    [[ ${chain[0]} == "$BDF" ]] || { why "chain starts at ${chain[0]}"; return 1; }
    note "nvmfd agrees: $BDF (endpoint) under ${chain[1]} (switch downstream) under ${chain[2]} (switch upstream) under ${chain[3]} (root port)"
    TOPO_CHAIN=("${chain[@]}")
}

# The CPU nvmfd decides with is the one /proc/cpuinfo shows, and (short boots) the model
# nvme-vfio.sh asked QEMU for.
topo_cpu() {
    topo_cpuinfo
    note "/proc/cpuinfo: $CPU_VENDOR family $CPU_FAMILY ($CPU_MODEL)"
    [[ $NV_CPU == "$CPU_VENDOR $CPU_FAMILY" ]] || { why "nvmfd reads the CPU as '$NV_CPU', /proc/cpuinfo says '$CPU_VENDOR $CPU_FAMILY'"; return 1; }
    if [[ -n ${TOPO_WANT_CPU:-} ]]; then
        [[ "$CPU_VENDOR $CPU_FAMILY" == "$TOPO_WANT_CPU" ]] ||
            { why "the guest's CPU is '$CPU_VENDOR $CPU_FAMILY', QEMU was asked for ${TOPO_WANT_MODEL:-a model} ('$TOPO_WANT_CPU')"; return 1; }
    fi
}

topo_acs_check() {
    [[ ${#TOPO_CHAIN[@]} -ge 4 ]] || { why "no chain from the step before"; return 1; }
    # The chain's functions and every switch downstream port nvmfd knows of.
    local -a fns
    read -ra fns <<<"${TOPO_CHAIN[*]}$NV_DN"
    local b sp n=0
    for b in "${fns[@]}"; do
        [[ -n ${TOPO_CFG_ACS[$b]:-} ]] && continue
        topo_cfg "$b" || { why "cannot read $b's config space"; return 1; }
        topo_acs
        TOPO_CFG_ACS[$b]=$TOPO_ACS
        [[ $TOPO_ACS == "${NV_ACS[$b]:-}" ]] || { why "ACS of $b: config space says '$TOPO_ACS', nvmfd '${NV_ACS[$b]:-}'"; return 1; }
        if command -v setpci >/dev/null && [[ -z $TOPO_ROOT ]]; then
            sp=$(setpci -s "$b" ECAP_ACS+6.w 2>/dev/null) || sp=absent
            [[ $sp == absent && $TOPO_ACS == absent ]] || [[ $TOPO_ACS == "present "*" $((16#$sp))" ]] ||
                { why "setpci reads ACS control of $b as '$sp', the walk here '$TOPO_ACS'"; return 1; }
        fi
        note "$b: ACS $TOPO_ACS"
        n=$((n + 1))
    done
    ((n >= 4)) || { why "only $n bridges checked"; return 1; }
}

# topo_redirects BDF...: those whose ACS Control has P2P Request Redirect (bit 2), Completion
# Redirect (bit 3) or Egress Control (bit 5) set: pci_bridge_has_acs_redir().
topo_redirects() {
    local b out=()
    for b in "$@"; do
        if [[ -z ${TOPO_CFG_ACS[$b]:-} ]]; then
            topo_cfg "$b" || continue
            topo_acs
            TOPO_CFG_ACS[$b]=$TOPO_ACS
        fi
        local -a a
        read -ra a <<<"${TOPO_CFG_ACS[$b]}"
        [[ ${a[0]} == present ]] && ((a[3] & 0x2c)) && out+=("$b")
    done
    echo "${out[@]}"
}

# The findings of Linux's rules and of the IOMMU one: for the rig's pairs these are fully
# determined by the registers, the CPU and the IOMMU group (the link and NUMA findings are not
# asserted here).
TOPO_KERNEL_RULES='["acs_redirect","acs_unreadable","amd_zen_root_complex","host_bridge_whitelisted","host_bridge_not_whitelisted","host_bridge_not_shared","host_bridge_unknown","no_common_upstream_bridge","iommu_translation"]'

# topo_pair PROVIDER CLIENT: nvmfd's decision, its exit status checked against `permitted`,
# parsed in one jq pass into P_GOT ("permitted map_type distance common [bridges]
# [acs_redirect]"), P_KERNEL (kernel-rule findings as "rule:severity", sorted), P_BLOCK (the
# blocking rules), P_REDIR_DEVS (the acs_redirect finding's devices), P_HB_DEVS (the
# host_bridge_not_whitelisted finding's devices), P_CLIENT (the client's description).
topo_pair() {
    local rc=0 out p
    out=$(topo_nvmfd --pair "$1" "$2" --json) || rc=$?
    ((rc == 0 || rc == 1)) || { why "nvmfd topology --pair $1 $2 exited $rc"; return 1; }
    p=$(jq -r --argjson k "$TOPO_KERNEL_RULES" '.entries[0].decision as $d | $d.findings as $f |
        ($d.permitted | tostring),
        "\($d.permitted) \($d.map_type) \($d.distance) \($d.common_upstream_bridge) [\($d.bridges | join(" "))] [\($d.acs_redirect | join(" "))]",
        ([$f[] | select(.rule as $r | $k | any(.[]; . == $r)) | "\(.rule):\(.severity)"] | sort | join(" ")),
        ([$f[] | select(.severity == "block") | .rule] | sort | join(" ")),
        ([$f[] | select(.rule == "acs_redirect") | .devices[]] | join(" ")),
        ([$f[] | select(.rule == "host_bridge_not_whitelisted") | .devices[]] | join(" ")),
        $d.client.description' <<<"$out") || { why "jq cannot read the --pair JSON: $out"; return 1; }
    local perm
    { read -r perm; read -r P_GOT; read -r P_KERNEL; read -r P_BLOCK; read -r P_REDIR_DEVS
        read -r P_HB_DEVS; read -r P_CLIENT; } <<<"$p"
    [[ ($perm == true && $rc == 0) || ($perm == false && $rc == 1) ]] || { why "--pair exit $rc with permitted=$perm"; return 1; }
}

# topo_below BDF: the first function in the slot below bridge BDF, from sysfs ("" if empty).
topo_below() {
    local d c
    d=$(topo_dir "$1") || return 1
    for c in "$d"/*; do
        c=${c##*/}
        [[ $c =~ $topo_bdf_re ]] && { echo "$c"; return 0; }
    done
}

# topo_link_gbps BDF: the current link's usable bandwidth per direction in millionths of a
# Gbit/s, from sysfs' speed ("2.5 GT/s PCIe") and width with the line encoding (PCIe base 6.0:
# 8b/10b up to 5 GT/s, 128b/130b from 8 GT/s, FLIT mode taken as 242/256 from 64 GT/s), rounded;
# "null" when either is unknown. Integer arithmetic on tenths of GT/s.
topo_link_gbps() {
    local d s w int frac t
    d=$(topo_dir "$1")
    s=$(<"$d/current_link_speed") 2>/dev/null || s=
    w=$(<"$d/current_link_width") 2>/dev/null || w=
    s=${s%% *}
    if ! [[ $w =~ ^[0-9]+$ && $s =~ ^([0-9]+)(\.([0-9]))?$ ]] || ((w == 0)); then
        echo null
        return 0
    fi
    int=${BASH_REMATCH[1]} frac=${BASH_REMATCH[3]:-0}
    t=$((int * 10 + frac)) # tenths of GT/s
    if ((t <= 50)); then
        echo $((t * w * 80000))                         # x 0.8 x 10^6 / 10
    elif ((t < 640)); then
        echo $(((t * w * 100000 * 128 + 65) / 130))     # x 128/130 x 10^6 / 10
    else
        echo $(((t * w * 100000 * 242 + 128) / 256))    # x 242/256 x 10^6 / 10
    fi
}

topo_across_switch() {
    local dn1=${TOPO_CHAIN[1]} up=${TOPO_CHAIN[2]} dn2='' ep b
    for b in $NV_DN; do
        [[ ${NV_PARENT[$b]} == "$up" && $b != "$dn1" ]] && { dn2=$b; break; }
    done
    [[ -n $dn2 ]] || { why "the switch has no second downstream port"; return 1; }
    # The device in that port's slot, from sysfs, as config space and nvmfd see it.
    ep=$(topo_below "$dn2")
    [[ -n $ep ]] || { why "the slot below $dn2 is empty (nvme-vfio.sh puts an e1000e there)"; return 1; }
    topo_cfg "$ep" || { why "cannot read $ep's config space"; return 1; }
    topo_port_type
    [[ $TOPO_PT == endpoint ]] || { why "$ep's PCIe capability says port type '$TOPO_PT', want an endpoint"; return 1; }
    [[ "${NV_PT[$ep]:-} ${NV_PARENT[$ep]:-}" == "endpoint $dn2" ]] ||
        { why "nvmfd does not see $ep as an endpoint below $dn2: ${NV_PT[$ep]:-} below ${NV_PARENT[$ep]:-}"; return 1; }
    local -a cc
    read -ra cc <<<"$(topo_chain "$ep")"
    [[ ${cc[0]:-} == "$ep" && ${cc[1]:-} == "$dn2" ]] || { why "$ep's sysfs chain is '${cc[*]}'"; return 1; }
    # Linux calc_map_type_and_dist(): walk up from the provider until a function that is also
    # on the client's way up; the distance is the steps taken on both sides (i + j).
    local i j common=
    for ((i = 0; i < ${#TOPO_CHAIN[@]}; i++)); do
        for ((j = 0; j < ${#cc[@]}; j++)); do
            [[ ${cc[j]} == "${TOPO_CHAIN[i]}" ]] && { common=${cc[j]}; break 2; }
        done
    done
    [[ -n $common ]] || { why "the chains of $BDF and $ep do not meet below the root bus"; return 1; }
    topo_cfg "$common" || { why "cannot read $common's config space"; return 1; }
    topo_port_type
    [[ $common == "$up" && $TOPO_PT == switch_upstream ]] ||
        { why "the paths meet at $common ($TOPO_PT), want the switch upstream port $up"; return 1; }
    # The bridges walked: the provider's side up to the meeting bridge, then down the client's.
    local -a want_br=("${TOPO_CHAIN[@]:1:i}")
    local k
    for ((k = j - 1; k >= 1; k--)); do want_br+=("${cc[k]}"); done
    # ACS is checked on every function of the walk: the provider's side up to and with the
    # meeting bridge, the client's side below it.
    local red
    red=$(topo_redirects "${TOPO_CHAIN[@]:0:i+1}" "${cc[@]:0:j}")
    topo_pair "$BDF" "$ep" || return 1
    note "$BDF -> $ep ($P_CLIENT): $P_GOT; ACS redirect read here on: [${red}]"
    if [[ -z $red ]]; then
        local expect="true bus_address $((i + j)) $up [${want_br[*]}] []"
        [[ $P_GOT == "$expect" ]] || { why "no ACS redirect on the path, want '$expect', nvmfd: $P_GOT"; return 1; }
        [[ -z $P_BLOCK ]] || { why "blocking findings: $P_BLOCK"; return 1; }
        [[ -z $P_KERNEL ]] || { why "kernel-rule findings without a reason for them: $P_KERNEL"; return 1; }
    else
        [[ $P_GOT == *" [$red]" && $P_GOT != "true bus_address"* ]] || { why "ACS redirect on [$red]: want it routed through the root complex and named, nvmfd: $P_GOT"; return 1; }
        [[ $P_REDIR_DEVS == "$red" ]] || { why "the acs_redirect finding names [$P_REDIR_DEVS], the registers [$red]"; return 1; }
    fi
    # The link bandwidth nvmfd reports (`gbps`, the figure the bench report reads) against
    # sysfs' speed and width (within a millionth: float against integer rounding).
    local mine theirs
    for b in "$BDF" "$ep"; do
        mine=$(topo_link_gbps "$b")
        theirs=${NV_GBPS[$b]:-null}
        if [[ $mine == null || $theirs == null ]]; then
            [[ $mine == "$theirs" ]] || { why "$b's link: sysfs gives $mine, nvmfd $theirs (millionths of Gbit/s)"; return 1; }
        else
            ((mine - theirs <= 1 && theirs - mine <= 1)) || { why "$b's link: sysfs gives $mine, nvmfd $theirs (millionths of Gbit/s)"; return 1; }
        fi
        note "$b: link $(<"$(topo_dir "$b")/current_link_speed") x$(<"$(topo_dir "$b")/current_link_width"): $mine millionths of Gbit/s, as nvmfd says"
    done
}

topo_root_complex() {
    # The NIC on the root bus: eth0's function (virtio-net), else the first network-class one.
    local nic="" d
    # eth0's device is the virtio device (virtioN); its PCI function is the directory above.
    if [[ -z $TOPO_ROOT && -e /sys/class/net/eth0/device ]]; then
        d=$(cd -P /sys/class/net/eth0/device && pwd)
        [[ ${d##*/} == virtio* ]] && d=${d%/*}
        nic=${d##*/}
        [[ $nic =~ $topo_bdf_re ]] || nic=""
    fi
    [[ -n $nic ]] || nic=$(jq -r '[.topology.functions[] | select((.class | startswith("0x02")) and .parent == null) | .bdf][0] // ""' "$TOPO_JSON")
    [[ -n $nic ]] || { why "no network function on the root bus"; return 1; }
    [[ ${NV_PARENT[$nic]:-} == none ]] || { why "$nic is not on the root bus (nvmfd: parent ${NV_PARENT[$nic]:-?})"; return 1; }
    local -a nc
    read -ra nc <<<"$(topo_chain "$nic")"
    ((${#nc[@]} == 1)) || { why "$nic's sysfs chain is '${nc[*]}', want it alone on the root bus"; return 1; }
    topo_pair "$BDF" "$nic" || return 1
    # What Linux's host-bridge rule says, from what is read here: an AMD CPU of family 0x17 or
    # later, else the root bus's first function (00.0) against the whitelist.
    local hb=${TOPO_CHAIN[-1]%:*}:00.0 dir vid did
    dir=$(topo_dir "$hb")
    vid=$(<"$dir/vendor") did=$(<"$dir/device")
    topo_cpuinfo
    local forwards=false why_fw=none
    if [[ $CPU_VENDOR == AuthenticAMD ]] && ((CPU_FAMILY >= 0x17)); then
        forwards=true why_fw=amd_zen_root_complex
    else
        case "${vid#0x}:${did#0x}" in
        8086:2030 | 8086:2031 | 8086:2032 | 8086:2033 | 8086:2020 | 8086:09a2 | 1ae0:*)
            forwards=true why_fw=host_bridge_whitelisted ;;
        esac
    fi
    # Through the root complex the IOMMU translates the NIC's DMA when its group's default
    # domain is DMA or DMA-FQ.
    local grp gtype=""
    grp=$(readlink "$(topo_dir "$nic")/iommu_group" 2>/dev/null) && grp=${grp##*/}
    [[ -n $grp ]] && gtype=$(<"$TOPO_ROOT/sys/kernel/iommu_groups/$grp/type") 2>/dev/null
    # No common upstream bridge: Linux's distance is the length of both ways up.
    local dist=$((${#TOPO_CHAIN[@]} + ${#nc[@]}))
    local got=${P_GOT% \[*} # without the bridges and acs_redirect lists
    got=${got% \[*}
    note "$BDF -> $nic: $got; root complex $hb ${vid#0x}:${did#0x}, CPU $CPU_VENDOR family $CPU_FAMILY: forwards=$forwards ($why_fw), NIC's IOMMU group ${grp:-none} ${gtype:-}"
    local want_rules r
    if [[ $forwards == true ]]; then
        [[ $got == "true through_host_bridge $dist null" ]] || { why "the root complex forwards: want 'true through_host_bridge $dist null', nvmfd: $got"; return 1; }
        local -a want=("$why_fw:info" no_common_upstream_bridge:warn)
        [[ $gtype == DMA || $gtype == DMA-FQ ]] && want+=(iommu_translation:warn)
        # Sorted as jq sorts (byte order).
        want_rules=$(for r in "${want[@]}"; do echo "$r"; done | LC_ALL=C sort)
        want_rules=${want_rules//$'\n'/ }
    else
        [[ $got == "false none $dist null" ]] || { why "the root complex does not forward: want 'false none $dist null', nvmfd: $got"; return 1; }
        want_rules="host_bridge_not_whitelisted:block no_common_upstream_bridge:block"
        [[ $P_HB_DEVS == "$hb" ]] || { why "host_bridge_not_whitelisted names '$P_HB_DEVS', the root complex is $hb"; return 1; }
    fi
    [[ $P_KERNEL == "$want_rules" ]] || { why "findings '$P_KERNEL', want '$want_rules'"; return 1; }
    note "reasons: $P_KERNEL"
}

TOPO_CHAIN=()
run_step "topology: the SSD's bridges and port types as sysfs and config space say" topo_tree
if ((${#TOPO_CHAIN[@]} >= 4)); then
    run_step "topology: the CPU nvmfd decides with is /proc/cpuinfo's${TOPO_WANT_CPU:+, the model asked for ($TOPO_WANT_CPU)}" topo_cpu
    run_step "topology: ACS of every bridge as nvmfd reports it = the registers read here" topo_acs_check
    run_step "topology: SSD vs the NIC on the switch's other downstream port, per the ACS read here" topo_across_switch
    run_step "topology: SSD vs the root-complex NIC, per the host-bridge rule and the CPU" topo_root_complex
fi
if ((TOPO_STANDALONE)); then
    summary guest-p2p-topology
    exit
fi
