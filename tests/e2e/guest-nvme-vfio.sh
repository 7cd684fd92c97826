#!/usr/bin/env bash
# tests/e2e/guest-nvme-vfio.sh - inside the guest started by tests/e2e/nvme-vfio.sh: bind the
# emulated SSD to vfio-pci and drive it with the userspace driver.
set -uo pipefail
[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me through tests/e2e/nvme-vfio.sh" >&2; exit 2; }
BIN=${NVMFD_BIN_DIR:?}
BDF=0000:03:00.0
PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
step() { echo "---- $*"; }

echo 1 >/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
[[ -d /sys/kernel/iommu_groups/0 ]] && pass "IOMMU groups present" || fail "no IOMMU groups (intel_iommu=on?)"
step "devices"
for d in /sys/bus/pci/devices/*; do
    printf '%s class %s driver %s group %s\n' "${d##*/}" "$(cat "$d/class")" \
        "$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)" \
        "$(basename "$(readlink "$d/iommu_group" 2>/dev/null)" 2>/dev/null)"
done

step "bind $BDF to vfio-pci"
echo vfio-pci >/sys/bus/pci/devices/$BDF/driver_override
[[ -e /sys/bus/pci/devices/$BDF/driver ]] && echo $BDF >/sys/bus/pci/devices/$BDF/driver/unbind
echo $BDF >/sys/bus/pci/drivers_probe
drv=$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")
[[ $drv == vfio-pci ]] && pass "bound to vfio-pci" || fail "driver is $drv"
ls -l /dev/vfio

step "driver self-test"
if "$BIN/nvmfd-nvme-selftest" --pci $BDF --nsid 1; then pass "selftest"; else fail "selftest"; fi

echo "guest-nvme-vfio: $PASSED passed, $FAILED failed"
((FAILED == 0))
