#!/bin/sh
# deploy/rig/smoke.sh - the smallest guest script: proves boot, root share, modules and network.
#   deploy/rig/run-guest.sh deploy/rig/smoke.sh
set -eu
echo "smoke: kernel $(uname -r), $(nproc) cpus, up $(cut -d' ' -f1 /proc/uptime)s"
echo "smoke: hostnqn $(cat /etc/nvme/hostnqn)"
for m in nvme_tcp nvmet_tcp nvme_rdma nvmet_rdma rdma_rxe null_blk configfs 9p virtio_net; do
    grep -q "^$m " /proc/modules || { echo "smoke: module $m not loaded"; exit 1; }
done
ip -brief addr show eth0
test -d /sys/kernel/config/nvmet || { echo "smoke: no nvmet configfs"; exit 1; }
nvme version
fio --version
echo "smoke: args: $*"
touch /tmp/writable "$RIG_OUT/hello"
echo "smoke: ok"
