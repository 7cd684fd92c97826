//! The start-up registration chain that lets an RDMA NIC reach an NVMe SSD's CMB directly
//! (docs/p2p.md, "RDMA"): for every SSD whose CMB a namespace served over RDMA may use, and
//! every RDMA device that serves it,
//!
//! 1. export the CMB's BAR range as a dma-buf through VFIO (`VFIO_DEVICE_FEATURE_DMA_BUF`,
//!    Linux ≥ 6.19),
//! 2. register that dma-buf with the device (`ibv_reg_dmabuf_mr`, on one PD per device shared
//!    by every reactor),
//! 3. make the CMB's pool with those registrations, so every CMB buffer carries each device's
//!    keys before the first I/O.
//!
//! Nothing here runs per I/O, and nothing here fails the start by itself: each step that fails
//! becomes a named reason ([`Failure`]) of the (SSD, RDMA device) pair, which the placement
//! decision turns into "host memory" (`auto`) or a refused start (`required`). `ibv_reg_mr` of
//! a BAR mmap and the kernel's `p2pmem/allocate` mappings are not registrable upstream
//! (EFAULT): they are named in the reason, never tried.

use nvmfd_bdev::Bdev;
use nvmfd_config::{Config, P2pMode, TransportKind};
use nvmfd_nvme::{Controller, DmaBuf, MakePool};
use nvmfd_p2p::placement::{DeviceMemory, PlacementDecision, Reason, Where};
use nvmfd_p2p::topology::{decide_rdma, Bdf, Severity, Sources, Topology};
use nvmfd_transport::rdma::cmb::{CmbMr, CmbPool, DevicePd};
use nvmfd_transport::rdma::verbs::Devices;
use nvmfd_transport::rdma::RdmaStaging;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use tracing::{info, warn};

/// One failed step of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `vfio_dma_buf_export`, `ibv_alloc_pd`, `ibv_reg_dmabuf_mr`, `cmb_pool`, `rdma_devices`.
    pub step: &'static str,
    /// A stable name for what went wrong (`dmabuf_kernel_too_old`, `dmabuf_mr_unsupported`...).
    pub code: &'static str,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]: {}", self.step, self.code, self.error)
    }
}

/// What the chain wants: the CMB of `bdev`'s controller, registered with `devices`.
pub struct Want<'a> {
    pub bdev: &'a str,
    pub ctrl: &'a Arc<Controller>,
    /// RDMA device names (`mlx5_0`, `rxe0`).
    pub devices: Vec<String>,
}

/// The outcome for one (bdev, RDMA device) pair.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub bdev: String,
    pub device: String,
    /// The dma-buf export of the CMB succeeded (`bar`, `offset`, `len`).
    pub exported: Option<(u32, u64, u64)>,
    /// Registered and in the CMB's pool, or every step that failed.
    pub result: Result<(), Vec<Failure>>,
}

/// What the reactors get (one entry per registered (CMB, device)) and every pair's outcome.
#[derive(Debug, Default)]
pub struct Chain {
    pub pools: Vec<CmbPool>,
    pub outcomes: Vec<Outcome>,
}

impl Chain {
    /// The failures of `bdev` over `device`, if the pair was tried and failed.
    pub fn failures(&self, bdev: &str, device: &str) -> Option<&[Failure]> {
        self.outcomes
            .iter()
            .find(|o| o.bdev == bdev && o.device == device)
            .and_then(|o| o.result.as_ref().err())
            .map(|v| v.as_slice())
    }
}

/// Run the chain for every wanted CMB. Control plane, before the reactors start and before
/// anything else makes a CMB's pool (a pool made without the registrations cannot take them
/// later: its buffers exist already).
pub fn register(wants: &[Want<'_>]) -> Chain {
    let mut chain = Chain::default();
    if wants.iter().all(|w| w.devices.is_empty()) {
        return chain;
    }
    let devices = match Devices::open() {
        Ok(d) => Some(d),
        Err(e) => {
            let f = Failure {
                step: "rdma_devices",
                code: "rdma_unavailable",
                error: e.to_string(),
            };
            for w in wants {
                for d in &w.devices {
                    chain.outcomes.push(Outcome {
                        bdev: w.bdev.to_string(),
                        device: d.clone(),
                        exported: None,
                        result: Err(vec![f.clone()]),
                    });
                }
            }
            None
        }
    };
    let Some(devices) = devices else {
        return chain;
    };
    // One PD per RDMA device for every CMB (a group's queue pairs on a device are made on it).
    let mut pds: HashMap<String, Result<DevicePd, Failure>> = HashMap::new();
    for w in wants.iter().filter(|w| !w.devices.is_empty()) {
        register_one(w, &devices, &mut pds, &mut chain);
    }
    chain
}

fn register_one(
    w: &Want<'_>,
    devices: &Arc<Devices>,
    pds: &mut HashMap<String, Result<DevicePd, Failure>>,
    chain: &mut Chain,
) {
    let fail_all = |chain: &mut Chain, exported, f: Failure| {
        for d in &w.devices {
            chain.outcomes.push(Outcome {
                bdev: w.bdev.to_string(),
                device: d.clone(),
                exported,
                result: Err(vec![f.clone()]),
            });
        }
    };
    let Some(cmb) = w.ctrl.cmb() else {
        return;
    };
    let (bar, offset, len) = (cmb.layout.bar, cmb.layout.offset, cmb.len() as u64);
    let buf = match DmaBuf::export(w.ctrl.vfio_device(), bar, offset, len) {
        Ok(b) => {
            info!(
                bdev = w.bdev,
                pci = w.ctrl.bdf(),
                bar,
                offset,
                len,
                "p2p: CMB exported as a dma-buf (VFIO_DEVICE_FEATURE_DMA_BUF)"
            );
            b
        }
        Err(e) => {
            warn!(
                bdev = w.bdev,
                pci = w.ctrl.bdf(),
                bar,
                offset,
                len,
                reason = e.code(),
                "p2p: VFIO dma-buf export of the CMB failed: {e}"
            );
            let f = Failure {
                step: "vfio_dma_buf_export",
                code: e.code(),
                error: e.to_string(),
            };
            return fail_all(chain, None, f);
        }
    };
    let exported = Some((bar, offset, len));
    let mut regs: Vec<CmbMr> = Vec::new();
    let mut failed: Vec<(String, Failure)> = Vec::new();
    for d in &w.devices {
        let pd = pds.entry(d.clone()).or_insert_with(|| {
            DevicePd::open(devices, d).map_err(|e| Failure {
                step: "ibv_alloc_pd",
                code: e.code(),
                error: e.to_string(),
            })
        });
        let pd = match pd {
            Ok(pd) => pd,
            Err(f) => {
                failed.push((d.clone(), f.clone()));
                continue;
            }
        };
        match pd.register_cmb(buf.as_fd(), len as usize, cmb.cpu_addr(), cmb.domain()) {
            Ok(mr) => {
                info!(bdev = w.bdev, device = %d, lkey = mr.keys().lkey, rkey = mr.keys().rkey,
                    len, "p2p: CMB registered with the RDMA device (ibv_reg_dmabuf_mr)");
                regs.push(mr);
            }
            Err(e) => {
                warn!(bdev = w.bdev, device = %d, reason = e.code(),
                    "p2p: ibv_reg_dmabuf_mr of the CMB refused: {e}");
                failed.push((
                    d.clone(),
                    Failure {
                        step: "ibv_reg_dmabuf_mr",
                        code: e.code(),
                        error: e.to_string(),
                    },
                ));
            }
        }
    }
    // The MRs hold their own reference to the dma-buf.
    drop(buf);
    if !regs.is_empty() {
        let registrars: Vec<&dyn nvmfd_p2p::mem::Registrar> = regs
            .iter()
            .map(|r| r as &dyn nvmfd_p2p::mem::Registrar)
            .collect();
        match cmb.make_pool(cmb.buf_size(), &registrars) {
            Ok(pool) => {
                for r in &regs {
                    chain.pools.push(r.pool(Arc::clone(pool)));
                    chain.outcomes.push(Outcome {
                        bdev: w.bdev.to_string(),
                        device: r.device().to_string(),
                        exported,
                        result: Ok(()),
                    });
                }
            }
            Err(e) => {
                let error = match e {
                    MakePool::Made(_) => {
                        "the CMB's pool was made before the RDMA registration (its buffers \
                         carry no keys of this device)"
                            .to_string()
                    }
                    MakePool::Refused(why) => why,
                };
                for r in &regs {
                    failed.push((
                        r.device().to_string(),
                        Failure {
                            step: "cmb_pool",
                            code: "cmb_pool_unregistered",
                            error: error.clone(),
                        },
                    ));
                }
            }
        }
    }
    for (device, f) in failed {
        chain.outcomes.push(Outcome {
            bdev: w.bdev.to_string(),
            device,
            exported,
            result: Err(vec![f]),
        });
    }
}

/// The chain for a configuration: every namespace with `p2p` other than `off`, served by an
/// RDMA listener, whose bdev is an `nvme` SSD with a CMB, wants its CMB registered with the RDMA
/// devices of its subsystem's RDMA listeners (every device for a wildcard address). A config
/// with no RDMA listener never loads rdma-core.
pub fn for_config(cfg: &Config, bdevs: &[Arc<dyn Bdev>]) -> Chain {
    let mut all_devices: Option<Vec<String>> = None;
    let mut wants: Vec<Want<'_>> = Vec::new();
    for s in &cfg.subsystems {
        let rdma: Vec<_> = s
            .listeners
            .iter()
            .filter(|l| l.transport == TransportKind::Rdma)
            .collect();
        if rdma.is_empty() {
            continue;
        }
        for n in s.namespaces.iter().filter(|n| n.p2p != P2pMode::Off) {
            let Some(b) = cfg.bdevs.iter().position(|b| b.name == n.bdev) else {
                continue;
            };
            let Some(ctrl) = bdevs[b].nvme_controller() else {
                continue;
            };
            if ctrl.cmb().is_none() {
                continue;
            }
            let mut devices = Vec::new();
            for l in &rdma {
                // A listener whose address no device has fails the start later, with its own
                // message; it serves nothing here.
                match nvmfd_transport::rdma::check_listen_address(SocketAddr::new(
                    l.address, l.port,
                )) {
                    Ok(Some(d)) => devices.push(d),
                    Ok(None) => devices.extend(
                        all_devices
                            .get_or_insert_with(|| {
                                Devices::open()
                                    .map(|d| {
                                        (0..d.len())
                                            .filter_map(|i| d.get(i))
                                            .map(|c| c.name())
                                            .collect()
                                    })
                                    .unwrap_or_default()
                            })
                            .iter()
                            .cloned(),
                    ),
                    Err(_) => {}
                }
            }
            devices.sort();
            devices.dedup();
            match wants.iter_mut().find(|w| w.bdev == n.bdev) {
                Some(w) => {
                    w.devices.extend(devices);
                    w.devices.sort();
                    w.devices.dedup();
                }
                None => wants.push(Want {
                    bdev: &n.bdev,
                    ctrl,
                    devices,
                }),
            }
        }
    }
    let chain = register(&wants);
    // Every reactor makes one cache of each (CMB, device) pool it serves: the caches' sizes
    // follow from how many share a CMB (a small CMB must not end up in one reactor's cache).
    for p in &chain.pools {
        p.shared_pool().share_among(cfg.reactors.cores.len());
    }
    chain
}

/// Finish an RDMA placement decision that the rest permitted (`d.uses_cmb()`): the PCIe
/// topology must let every serving device reach the CMB, and the chain must have registered the
/// CMB with each of them; every refusal is added as a reason (so `auto` falls back to host
/// memory naming all of them, and `required` refuses to start naming all of them). When all is
/// well, reads go through the CMB too if the controller takes read data there (CMBSZ.RDS).
pub fn settle(d: &mut PlacementDecision, chain: &Chain, bdev: &dyn Bdev) {
    let tried: Vec<&Outcome> = chain.outcomes.iter().filter(|o| o.bdev == d.bdev).collect();
    if tried.is_empty() {
        d.refuse(Reason::Registration {
            step: "rdma_devices",
            error: "no RDMA device serves this namespace (no listener address an RDMA device \
                    owns)"
                .into(),
        });
        return;
    }
    let mut refusals = Vec::new();
    let topo = Topology::load(&Sources::new(
        std::path::Path::new("/sys"),
        std::path::Path::new("/proc"),
    ));
    let provider = bdev
        .nvme_controller()
        .and_then(|c| c.bdf().parse::<Bdf>().ok());
    for o in &tried {
        match (&topo, provider) {
            (Ok(topo), Some(p)) => {
                let t = decide_rdma(topo, p, &o.device);
                if !t.permitted {
                    let rules: Vec<&'static str> = t
                        .findings
                        .iter()
                        .filter(|f| f.severity == Severity::Block)
                        .map(|f| f.rule)
                        .collect();
                    if d.topology.is_none() {
                        d.topology = Some(t);
                    }
                    refusals.push(Reason::TopologyRefused { rules });
                }
            }
            (Err(e), _) => refusals.push(Reason::Registration {
                step: "topology",
                error: format!("cannot read the PCI tree under /sys: {e}"),
            }),
            (_, None) => refusals.push(Reason::Registration {
                step: "topology",
                error: "the SSD's PCI address is not known".into(),
            }),
        }
        if let Err(fs) = &o.result {
            for f in fs {
                refusals.push(Reason::Registration {
                    step: f.step,
                    error: format!("[{}] {}", f.code, f.error),
                });
            }
        }
    }
    if refusals.is_empty() {
        if let DeviceMemory::Cmb(c) = bdev.device_memory() {
            if c.rds {
                d.reads = d.writes;
            }
        }
        return;
    }
    for r in refusals.into_iter().rev() {
        d.refuse(r);
    }
}

/// Per bdev (by index): the domains its namespace's RDMA decision placed its data in.
pub fn staging(cfg: &Config, decisions: &[PlacementDecision]) -> Vec<RdmaStaging> {
    cfg.bdevs
        .iter()
        .map(|b| {
            let d = decisions
                .iter()
                .find(|d| d.transport == "rdma" && d.bdev == b.name);
            let pick = |w: Where| w.is_cmb().then(|| w.domain());
            let label = d.map_or_else(String::new, |d| format!("{} nsid {}", d.subsystem, d.nsid));
            RdmaStaging::new(
                d.and_then(|d| pick(d.writes)),
                d.and_then(|d| pick(d.reads)),
                &label,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_wanted_touches_no_rdma_library() {
        let c = register(&[]);
        assert!(c.pools.is_empty() && c.outcomes.is_empty());
        assert!(c.failures("ssd0", "rxe0").is_none());
    }

    struct FakeSsd(nvmfd_bdev::BdevInfo);
    impl Bdev for FakeSsd {
        fn info(&self) -> &nvmfd_bdev::BdevInfo {
            &self.0
        }
        fn channel(&self) -> std::io::Result<Box<dyn nvmfd_bdev::BdevChannel>> {
            Err(std::io::Error::other("not for I/O"))
        }
    }

    fn ssd() -> FakeSsd {
        FakeSsd(nvmfd_bdev::BdevInfo {
            name: "ssd0".into(),
            kind: "nvme",
            block_size: 512,
            num_blocks: 1 << 20,
            deallocate_zeroes: true,
            volatile_cache: false,
        })
    }

    /// An RDMA decision the rest permitted (writes in the CMB), as `p2p::decide` hands it over.
    fn permitted(mode: nvmfd_p2p::placement::Mode) -> PlacementDecision {
        let mem = DeviceMemory::Cmb(nvmfd_p2p::placement::CmbFacts {
            pci: "0000:03:00.0".into(),
            domain: nvmfd_p2p::mem::Domain::Cmb { device: 0 },
            bytes: 64 << 20,
            rds: true,
            wds: true,
            mixed_lists: true,
        });
        let mut d = nvmfd_p2p::placement::decide_tcp("nqn.a", 1, "ssd0", mode, &mem);
        d.transport = "rdma";
        d.reasons.clear();
        assert!(d.uses_cmb());
        d
    }

    fn refused_chain() -> Chain {
        Chain {
            pools: Vec::new(),
            outcomes: vec![Outcome {
                bdev: "ssd0".into(),
                device: "rxe0".into(),
                exported: Some((2, 0, 64 << 20)),
                result: Err(vec![Failure {
                    step: "ibv_reg_dmabuf_mr",
                    code: "dmabuf_mr_unsupported",
                    error: "RDMA device rxe0: ibv_reg_dmabuf_mr of the CMB refused (EOPNOTSUPP)"
                        .into(),
                }]),
            }],
        }
    }

    #[test]
    fn a_refused_registration_keeps_rdma_data_in_host_memory_and_names_every_step() {
        use nvmfd_p2p::placement::Mode;
        let mut d = permitted(Mode::Auto);
        settle(&mut d, &refused_chain(), &ssd());
        assert!(!d.uses_cmb() && !d.refuses_start());
        let s = d.summary();
        assert!(
            s.contains("writes in host memory, reads in host memory (p2p: auto)"),
            "{s}"
        );
        assert!(
            s.contains("failed at ibv_reg_dmabuf_mr: [dmabuf_mr_unsupported]"),
            "{s}"
        );
        assert!(s.contains("EOPNOTSUPP"), "{s}");
        // This fake SSD has no PCI address: the topology step says so instead of passing.
        assert!(s.contains("failed at topology"), "{s}");
        let mut r = permitted(Mode::Required);
        settle(&mut r, &refused_chain(), &ssd());
        assert!(r.refuses_start());
        let err = crate::p2p::check(&[r]).unwrap_err().to_string();
        assert!(
            err.contains("required cannot be met") && err.contains("ibv_reg_dmabuf_mr"),
            "{err}"
        );
    }

    #[test]
    fn a_namespace_no_rdma_device_serves_falls_back_saying_so() {
        let mut d = permitted(nvmfd_p2p::placement::Mode::Auto);
        settle(&mut d, &Chain::default(), &ssd());
        assert!(!d.uses_cmb());
        assert!(
            d.summary().contains("failed at rdma_devices"),
            "{}",
            d.summary()
        );
    }

    #[test]
    fn staging_follows_the_rdma_decisions_only() {
        let yaml = concat!(
            "bdevs:\n",
            "  - { name: ssd0, malloc: { size: 1MiB } }\n",
            "  - { name: ram1, malloc: { size: 1MiB } }\n"
        );
        let cfg = nvmfd_config::parse_str(yaml, "test.yaml").unwrap();
        let mut rdma = permitted(nvmfd_p2p::placement::Mode::Auto);
        rdma.reads = rdma.writes;
        let mut tcp = permitted(nvmfd_p2p::placement::Mode::Auto);
        tcp.transport = "tcp";
        tcp.bdev = "ram1".into();
        let st = staging(&cfg, &[rdma, tcp]);
        let cmb = Some(nvmfd_p2p::mem::Domain::Cmb { device: 0 });
        assert_eq!(st[0], RdmaStaging::new(cmb, cmb, "nqn.a nsid 1"));
        assert_eq!(
            st[1],
            RdmaStaging::default(),
            "a TCP decision stages nothing over RDMA"
        );
    }

    #[test]
    fn failures_display_step_code_and_error() {
        let f = Failure {
            step: "ibv_reg_dmabuf_mr",
            code: "dmabuf_mr_unsupported",
            error: "RDMA device rxe0: refused".into(),
        };
        assert_eq!(
            f.to_string(),
            "ibv_reg_dmabuf_mr [dmabuf_mr_unsupported]: RDMA device rxe0: refused"
        );
    }
}
