# shellcheck shell=bash
# tests/e2e/guest-p2p-topology.sh - sourced by tests/e2e/guest-p2p-rdma.sh (INSIDE the nvme-vfio
# guest: the SSD at $BDF behind the emulated switch, intel_iommu=on): `nvmfd topology --json`
# against the real emulated hierarchy, with config space read here, independently of nvmfd:
#   1. the SSD's chain of bridges (downstream port, switch upstream port, root port) and each
#      one's PCIe port type, from the sysfs path and the PCI Express capability's type field;
#   2. the ACS capability and Control register of every bridge on that chain and of every switch
#      downstream port, walked here through the extended capabilities (and with setpci
#      ECAP_ACS+6.w where pciutils is installed), must be what nvmfd reports;
#   3. two pairs decided with `--pair`, their verdict and reasons computed here from the
#      registers read in 2 and Linux's rules (drivers/pci/p2pdma.c):
#      - the SSD and the switch's other downstream port (its slot is empty: the rig has no
#        second endpoint under the switch; a port stands in as the client): the paths meet in
#        the switch upstream port, so the verdict follows from ACS RR/CR/EC on the functions
#        walked (the provider, its downstream port, the upstream port, the client) — bus
#        addresses without redirect, else the acs_redirect finding naming the ports;
#      - the SSD and the root-complex NIC (virtio-net, eth0): no common upstream bridge, so the
#        host-bridge rule decides: the root complex (00:00.0) must be on the whitelist or the
#        CPU an AMD Zen, else refused (host_bridge_not_whitelisted, no_common_upstream_bridge).
#   QEMU's xio3130 switch ports and ioh3420 root port have no ACS capability (only AER in
#   their extended space), so Linux has nothing to enable on them even with the IOMMU on; the
#   check asserts what the registers say, whichever it is.
# Needs from the caller: NVMFD, BDF, run_step/why/note. TOPO_ROOT (default empty) points the
# reads at a captured tree (sys/, proc/) to try the check outside the guest.

TOPO_ROOT=${TOPO_ROOT:-}
TOPO_JSON=/tmp/nvmfd-topology.json
declare -A TOPO_CFG_ACS=()  # bdf -> "absent" or "present OFFSET CAP CTRL" (decimal)

# topo_dir BDF: the function's sysfs directory.
topo_dir() {
    if [[ -e $TOPO_ROOT/sys/bus/pci/devices/$1 ]]; then
        readlink -f "$TOPO_ROOT/sys/bus/pci/devices/$1"
    else
        find "$TOPO_ROOT/sys/devices" -maxdepth 8 -type d -name "$1" -print -quit
    fi
}

# topo_cfg BDF: config space bytes as decimal numbers into TOPO_B (as many as sysfs shows).
topo_cfg() {
    local d
    d=$(topo_dir "$1")
    [[ -n $d && -r $d/config ]] || return 1
    read -ra TOPO_B <<<"$(od -An -v -tu1 "$d/config" | tr -s ' \n' ' ')"
}

topo_w16() { echo $((TOPO_B[$1] | TOPO_B[$1 + 1] << 8)); }
topo_w32() { echo $((TOPO_B[$1] | TOPO_B[$1 + 1] << 8 | TOPO_B[$1 + 2] << 16 | TOPO_B[$1 + 3] << 24)); }

# topo_port_type: the port type of the function in TOPO_B, by nvmfd's names ("" without a
# PCI Express capability). Capability list from 0x34 (Status bit 4), PCIe capability ID 0x10,
# device/port type in bits 7:4 of its Capabilities register (PCIe base 6.0, 7.5.3.2).
topo_port_type() {
    (($(topo_w16 6) & 0x10)) || return 0
    local p=$((TOPO_B[0x34] & 0xfc)) n=0
    while ((p >= 0x40 && n++ < 48)); do
        if ((TOPO_B[p] == 0x10)); then
            local names=(endpoint legacy_endpoint reserved reserved root_port switch_upstream
                switch_downstream pcie_to_pci_bridge pci_to_pcie_bridge rc_integrated_endpoint
                rc_event_collector)
            echo "${names[$((TOPO_B[p + 2] >> 4 & 0xf))]:-reserved}"
            return 0
        fi
        p=$((TOPO_B[p + 1] & 0xfc))
    done
}

# topo_acs: the ACS extended capability (ID 0x000d) of the function in TOPO_B: "absent" or
# "present OFFSET CAPABILITY CONTROL" (Capability at +4, Control at +6; PCIe base 6.0,
# 7.7.11). Extended capabilities start at 0x100, each header's next pointer in bits 31:20.
topo_acs() {
    ((${#TOPO_B[@]} >= 4096)) || { echo unreadable; return 0; }
    local p=256 n=0 h
    while ((p >= 256 && n++ < 512)); do
        h=$(topo_w32 $p)
        ((h == 0 || h == 0xffffffff)) && break
        if (((h & 0xffff) == 0x000d)); then
            echo "present $p $(topo_w16 $((p + 4))) $(topo_w16 $((p + 6)))"
            return 0
        fi
        p=$((h >> 20 & 0xffc))
    done
    echo absent
}

# The functions from the SSD up to the root bus, from the sysfs path.
topo_chain() {
    local d
    d=$(topo_dir "$BDF") || return 1
    local part out=()
    IFS=/ read -ra part <<<"${d#"$TOPO_ROOT"/sys/devices/}"
    for part in "${part[@]}"; do
        [[ $part =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]] && out=("$part" "${out[@]}")
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

topo_tree() {
    topo_nvmfd --json >"$TOPO_JSON" || { why "nvmfd topology --json failed"; return 1; }
    local -a chain
    read -ra chain <<<"$(topo_chain)"
    ((${#chain[@]} >= 4)) || { why "the SSD's sysfs path has ${#chain[@]} functions (${chain[*]}), want the SSD, 2 switch ports and a root port"; return 1; }
    note "sysfs chain: ${chain[*]}"
    local want=(endpoint switch_downstream switch_upstream root_port) i b pt got parent
    for i in 0 1 2 3; do
        b=${chain[i]}
        topo_cfg "$b" || { why "cannot read $b's config space"; return 1; }
        pt=$(topo_port_type)
        [[ $pt == "${want[i]}" ]] || { why "$b's PCIe capability says port type '$pt', the rig has ${want[i]} there"; return 1; }
        got=$(jq -r --arg b "$b" '.topology.functions[$b].port_type' "$TOPO_JSON")
        [[ $got == "$pt" ]] || { why "nvmfd says $b is a '$got', its config space says $pt"; return 1; }
        parent=$(jq -r --arg b "$b" '.topology.functions[$b].parent // "none"' "$TOPO_JSON")
        [[ $parent == "${chain[i + 1]:-none}" ]] || { why "nvmfd gives $b the parent $parent, sysfs ${chain[i + 1]:-none}"; return 1; }
    done
    [[ ${chain[0]} == "$BDF" ]] || { why "chain starts at ${chain[0]}"; return 1; }
    note "nvmfd agrees: $BDF (endpoint) under ${chain[1]} (switch downstream) under ${chain[2]} (switch upstream) under ${chain[3]} (root port)"
    TOPO_CHAIN=("${chain[@]}")
}

topo_acs_check() {
    [[ ${#TOPO_CHAIN[@]} -ge 4 ]] || { why "no chain from the step before"; return 1; }
    # The chain's functions and every switch downstream port nvmfd knows of.
    local -a fns
    read -ra fns <<<"${TOPO_CHAIN[*]} $(jq -r '[.topology.functions[] | select(.port_type == "switch_downstream") | .bdf] | join(" ")' "$TOPO_JSON")"
    local b mine theirs sp n=0
    for b in "${fns[@]}"; do
        [[ -n ${TOPO_CFG_ACS[$b]:-} ]] && continue
        topo_cfg "$b" || { why "cannot read $b's config space"; return 1; }
        mine=$(topo_acs)
        TOPO_CFG_ACS[$b]=$mine
        theirs=$(jq -r --arg b "$b" '.topology.functions[$b].acs | if .state == "present" then "present \(.offset) \(.capability) \(.control)" else .state end' "$TOPO_JSON")
        [[ $mine == "$theirs" ]] || { why "ACS of $b: config space says '$mine', nvmfd '$theirs'"; return 1; }
        if command -v setpci >/dev/null && [[ -z $TOPO_ROOT ]]; then
            sp=$(setpci -s "$b" ECAP_ACS+6.w 2>/dev/null) || sp=absent
            [[ $sp == absent && $mine == absent ]] || [[ $mine == "present "*" $((16#$sp))" ]] ||
                { why "setpci reads ACS control of $b as '$sp', the walk here '$mine'"; return 1; }
        fi
        note "$b: ACS $mine"
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
            TOPO_CFG_ACS[$b]=$(topo_acs)
        fi
        local -a a
        read -ra a <<<"${TOPO_CFG_ACS[$b]}"
        [[ ${a[0]} == present ]] && ((a[3] & 0x2c)) && out+=("$b")
    done
    echo "${out[@]}"
}

# topo_pair PROVIDER CLIENT: nvmfd's decision as JSON into TOPO_PAIR; exit status 0/1 checked
# against `permitted`.
topo_pair() {
    local rc=0
    TOPO_PAIR=$(topo_nvmfd --pair "$1" "$2" --json) || rc=$?
    ((rc == 0 || rc == 1)) || { why "nvmfd topology --pair $1 $2 exited $rc"; return 1; }
    local p
    p=$(jq -r '.entries[0].decision.permitted' <<<"$TOPO_PAIR")
    [[ ($p == true && $rc == 0) || ($p == false && $rc == 1) ]] || { why "--pair exit $rc with permitted=$p"; return 1; }
}

topo_rules() { jq -r "[.entries[0].decision.findings[] | select($1) | .rule] | sort | join(\" \")" <<<"$TOPO_PAIR"; }

topo_across_switch() {
    local dn1=${TOPO_CHAIN[1]} up=${TOPO_CHAIN[2]} dn2
    dn2=$(jq -r --arg up "$up" --arg dn1 "$dn1" '[.topology.functions[] | select(.parent == $up and .bdf != $dn1 and .port_type == "switch_downstream") | .bdf][0] // ""' "$TOPO_JSON")
    [[ -n $dn2 ]] || { why "the switch has no second downstream port"; return 1; }
    topo_pair "$BDF" "$dn2" || return 1
    # Linux walks the provider's chain up to the common bridge (the upstream port), checking
    # each function, then the client's side below it.
    local red
    red=$(topo_redirects "$BDF" "$dn1" "$up" "$dn2")
    local d='.entries[0].decision' got
    got=$(jq -r "\"\($d.permitted) \($d.map_type) \($d.distance) \($d.common_upstream_bridge) [\($d.acs_redirect | join(\" \"))]\"" <<<"$TOPO_PAIR")
    note "$BDF -> $dn2: $got; ACS redirect read here on: [${red}]"
    if [[ -z $red ]]; then
        [[ $got == "true bus_address 3 $up []" ]] || { why "no ACS redirect on the path, want 'true bus_address 3 $up []', nvmfd: $got"; return 1; }
        [[ -z $(topo_rules '.rule == "acs_redirect"') ]] || { why "an acs_redirect finding without redirect bits"; return 1; }
    else
        [[ $got == *" [$red]" && $got != "true bus_address"* ]] || { why "ACS redirect on [$red]: want it routed through the root complex and named, nvmfd: $got"; return 1; }
        local devs
        devs=$(jq -r "[.entries[0].decision.findings[] | select(.rule == \"acs_redirect\") | .devices[]] | join(\" \")" <<<"$TOPO_PAIR")
        [[ $devs == "$red" ]] || { why "the acs_redirect finding names [$devs], the registers [$red]"; return 1; }
    fi
}

topo_root_complex() {
    # The NIC on the root bus: eth0's function (virtio-net), else the first network-class one.
    local nic=""
    # eth0's device is the virtio device (virtioN); its PCI function is the directory above.
    if [[ -z $TOPO_ROOT && -e /sys/class/net/eth0/device ]]; then
        local d
        d=$(readlink -f /sys/class/net/eth0/device)
        [[ $(basename "$d") == virtio* ]] && d=$(dirname "$d")
        nic=$(basename "$d")
        [[ $nic =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]] || nic=""
    fi
    [[ -n $nic ]] || nic=$(jq -r '[.topology.functions[] | select((.class | startswith("0x02")) and .parent == null) | .bdf][0] // ""' "$TOPO_JSON")
    [[ -n $nic ]] || { why "no network function on the root bus"; return 1; }
    [[ $(jq -r --arg b "$nic" '.topology.functions[$b].parent // "none"' "$TOPO_JSON") == none ]] ||
        { why "$nic is not on the root bus"; return 1; }
    topo_pair "$BDF" "$nic" || return 1
    # What Linux's host-bridge rule says, from what is read here: the root bus's first function
    # (00.0) against the whitelist, or an AMD CPU of family 0x17 or later.
    local hb=${TOPO_CHAIN[-1]%:*}:00.0 dir vid did vendor fam
    dir=$(topo_dir "$hb")
    vid=$(<"$dir/vendor") did=$(<"$dir/device")
    vendor=$(awk -F': *' '/^vendor_id/ {print $2; exit}' "$TOPO_ROOT/proc/cpuinfo")
    fam=$(awk -F': *' '/^cpu family/ {print $2; exit}' "$TOPO_ROOT/proc/cpuinfo")
    local forwards=false
    [[ $vendor == AuthenticAMD ]] && ((fam >= 0x17)) && forwards=true
    case "${vid#0x}:${did#0x}" in
        8086:2030 | 8086:2031 | 8086:2032 | 8086:2033 | 8086:2020 | 8086:09a2 | 1ae0:*) forwards=true ;;
    esac
    local d='.entries[0].decision' got
    got=$(jq -r "\"\($d.permitted) \($d.map_type) \($d.common_upstream_bridge)\"" <<<"$TOPO_PAIR")
    note "$BDF -> $nic: $got; root complex $hb ${vid#0x}:${did#0x}, CPU $vendor family $fam: forwards=$forwards"
    local blocks
    blocks=$(topo_rules '.severity == "block"')
    if [[ $forwards == true ]]; then
        [[ $got == "true through_host_bridge null" ]] || { why "the root complex forwards: want 'true through_host_bridge null', nvmfd: $got"; return 1; }
    else
        [[ $got == "false none null" ]] || { why "the root complex does not forward: want 'false none null', nvmfd: $got"; return 1; }
        [[ $blocks == "host_bridge_not_whitelisted no_common_upstream_bridge" ]] ||
            { why "blocking rules '$blocks', want host_bridge_not_whitelisted no_common_upstream_bridge"; return 1; }
        local named
        named=$(jq -r '[.entries[0].decision.findings[] | select(.rule == "host_bridge_not_whitelisted") | .devices[]] | join(" ")' <<<"$TOPO_PAIR")
        [[ $named == "$hb" ]] || { why "host_bridge_not_whitelisted names '$named', the root complex is $hb"; return 1; }
        note "refused by: $blocks"
    fi
}

TOPO_CHAIN=()
run_step "topology: the SSD's bridges and port types as sysfs and config space say" topo_tree
if ((${#TOPO_CHAIN[@]} >= 4)); then
    run_step "topology: ACS of every bridge as nvmfd reports it = the registers read here" topo_acs_check
    run_step "topology: SSD vs the switch's other downstream port, per the ACS read here" topo_across_switch
    run_step "topology: SSD vs the root-complex NIC, per the host-bridge rule" topo_root_complex
fi
