//! The start-up placement decision: for one (transport client, namespace) pair, whether the
//! namespace's data is staged in its SSD's Controller Memory Buffer or in host memory, with
//! every reason (never a bare bool). The daemon makes one per namespace and transport at
//! start-up from the configured [`Mode`], what the namespace's block device offers
//! ([`DeviceMemory`]) and, for RDMA, the PCIe topology ([`crate::topology::Decision`]) and the
//! registration of the CMB with the NIC; docs/p2p.md explains every [`Reason`].
//!
//! The decision is the only input of the data path's domain choice: a queue pair of that
//! transport asks the domain the decision chose for a buffer, per command (a command's data is
//! then wholly in the CMB or wholly out of it: NVMe Base 2.0, 8.2.1 "Controller Memory Buffer":
//! data partly in it is Invalid Use of Controller Memory Buffer, status 12h).

use crate::mem::Domain;
use crate::topology::{Bdf, Decision, Finding, Severity};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// The `p2p:` setting of a namespace (the config crate's `P2pMode`; this crate depends on no
/// other nvmfd crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The CMB when the decision permits it, else host memory.
    Auto,
    /// Host memory.
    Off,
    /// The CMB, or the daemon does not start.
    Required,
}

/// Who moves the data between the wire and the staging buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Client {
    /// The CPU (NVMe/TCP: the reactor receives H2CData into the buffer through its mapping).
    Cpu,
    /// An RDMA device (its PCI function when it has one; soft-RoCE has none).
    Rdma { device: String, pci: Option<Bdf> },
}

/// What a block device's memory offers the decision (from the bdev, at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMemory {
    /// Not an NVMe SSD (malloc, null, uring): it has no device memory to stage data in.
    NotNvme { kind: String },
    /// An NVMe SSD without a CMB (CAP.CMBS clear).
    NoCmb { pci: String },
    /// The SSD has a CMB (CAP.CMBS) but the driver could not enable and map it (its open logged
    /// why: a CMB without data support, outside its BAR, a base address refused).
    CmbUnusable { pci: String },
    /// The CMB is enabled and mapped into this process.
    Cmb(CmbFacts),
}

/// An enabled, mapped CMB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmbFacts {
    /// The SSD's PCI address.
    pub pci: String,
    /// The CMB's domain (its pool hands out the buffers).
    pub domain: Domain,
    /// Bytes of CMB.
    pub bytes: u64,
    /// CMBSZ.RDS: the controller takes data of controller-to-host commands (reads) in the CMB.
    pub rds: bool,
    /// CMBSZ.WDS: the controller takes data of host-to-controller commands (writes) in the CMB.
    pub wds: bool,
    /// CMBLOC.CDPMLS: a command's PRP list may be in host memory while its data is in the CMB.
    /// The driver keeps PRP lists in host memory, and a CMB buffer larger than two pages needs
    /// one, so without it the SSD would answer 12h (Invalid Use of Controller Memory Buffer).
    pub mixed_lists: bool,
}

/// One reason of a decision. Each has a stable rule name ([`Reason::rule`], documented in
/// docs/p2p.md), a severity (`block`: the CMB is not used for it; `info`: context) and, where
/// something can be changed, what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `p2p: off`.
    ConfigOff,
    /// The namespace's bdev is not an `nvme` bdev.
    BdevNotNvme { kind: String },
    /// The SSD has no CMB.
    NoCmb { pci: String },
    /// The SSD's CMB could not be enabled or mapped.
    CmbUnusable { pci: String },
    /// The CMB does not take write data (CMBSZ.WDS clear).
    CmbLacksWds { pci: String },
    /// CMBLOC.CDPMLS clear: PRP lists in host memory for data in the CMB are refused.
    CmbNoMixedLists { pci: String },
    /// The CMB does not take read data (CMBSZ.RDS clear).
    CmbLacksRds { pci: String },
    /// NVMe/TCP write data is staged by the CPU: received from the socket into the BAR mapping.
    CpuStaging { pci: String },
    /// NVMe/TCP read data stays in host memory (the CPU would only copy it out of the BAR again).
    TcpReadsInHost,
    /// RDMA: the PCIe topology does not let the NIC reach the CMB (the checker's blocking rules).
    TopologyRefused { rules: Vec<&'static str> },
    /// RDMA: registering the CMB with the NIC failed at `step` (e.g. `vfio_dma_buf_export`,
    /// `ibv_reg_dmabuf_mr`), with the error.
    Registration { step: &'static str, error: String },
}

impl Reason {
    /// Stable rule name (docs/p2p.md, "Placement reasons").
    pub fn rule(&self) -> &'static str {
        match self {
            Reason::ConfigOff => "p2p_off",
            Reason::BdevNotNvme { .. } => "bdev_not_nvme",
            Reason::NoCmb { .. } => "no_cmb",
            Reason::CmbUnusable { .. } => "cmb_unusable",
            Reason::CmbLacksWds { .. } => "cmb_lacks_wds",
            Reason::CmbNoMixedLists { .. } => "cmb_no_mixed_lists",
            Reason::CmbLacksRds { .. } => "cmb_lacks_rds",
            Reason::CpuStaging { .. } => "tcp_cpu_staging",
            Reason::TcpReadsInHost => "tcp_reads_in_host",
            Reason::TopologyRefused { .. } => "topology_refused",
            Reason::Registration { .. } => "registration_failed",
        }
    }

    /// Whether it keeps data out of the CMB.
    pub fn severity(&self) -> Severity {
        match self {
            Reason::CpuStaging { .. } | Reason::TcpReadsInHost => Severity::Info,
            _ => Severity::Block,
        }
    }

    /// What was found.
    pub fn message(&self) -> String {
        match self {
            Reason::ConfigOff => "p2p: off in the configuration".into(),
            Reason::BdevNotNvme { kind } => {
                format!("bdev is not an nvme bdev ({kind}): it has no device memory")
            }
            Reason::NoCmb { pci } => format!("bdev has no CMB ({pci}: CAP.CMBS is clear)"),
            Reason::CmbUnusable { pci } => format!(
                "the CMB of {pci} could not be enabled or mapped (the bdev's open logged why)"
            ),
            Reason::CmbLacksWds { pci } => {
                format!("CMB lacks WDS ({pci}: CMBSZ.WDS clear, no write data in the CMB)")
            }
            Reason::CmbNoMixedLists { pci } => format!(
                "CMB of {pci} does not take data whose PRP list is in host memory \
                 (CMBLOC.CDPMLS clear; NVMe base 2.x: such a command fails with status 12h)"
            ),
            Reason::CmbLacksRds { pci } => {
                format!("CMB lacks RDS ({pci}: CMBSZ.RDS clear, no read data in the CMB)")
            }
            Reason::CpuStaging { pci } => format!(
                "write data is received by the CPU straight into the CMB of {pci} \
                 (staging: CPU stores into the BAR, no NIC DMA)"
            ),
            Reason::TcpReadsInHost => {
                "read data stays in host memory (over TCP the CPU would copy it out of the BAR)"
                    .into()
            }
            Reason::TopologyRefused { rules } => {
                format!("the PCIe topology refuses the pair ({})", rules.join(", "))
            }
            Reason::Registration { step, error } => {
                format!("registering the CMB with the RDMA device failed at {step}: {error}")
            }
        }
    }

    /// What to change, when something can be.
    pub fn fix(&self) -> Option<String> {
        Some(match self {
            Reason::ConfigOff => "set `p2p: auto` on the namespace or its subsystem".into(),
            Reason::BdevNotNvme { .. } => {
                "back the namespace with an `nvme` bdev (an SSD with a CMB) or set `p2p: off`"
                    .into()
            }
            Reason::NoCmb { .. } => "use an SSD that has a Controller Memory Buffer".into(),
            Reason::CmbUnusable { .. } => {
                "see the \"CMB not usable\" line of the log at start-up".into()
            }
            Reason::CmbLacksWds { .. } | Reason::CmbLacksRds { .. } => {
                "use an SSD whose CMB supports read and write data (CMBSZ.RDS and WDS)".into()
            }
            Reason::CmbNoMixedLists { .. } => {
                "use an SSD whose CMB allows mixed data pointer locations (CMBLOC.CDPMLS)".into()
            }
            Reason::TopologyRefused { .. } => {
                "see `nvmfd topology` for the pair: each blocking rule says what to change".into()
            }
            Reason::Registration { .. } => {
                "see docs/p2p.md, \"RDMA registration\" (kernel, NIC driver)".into()
            }
            Reason::CpuStaging { .. } | Reason::TcpReadsInHost => return None,
        })
    }

    /// As a topology [`Finding`] (the same shape `nvmfd topology` prints).
    pub fn finding(&self) -> Finding {
        Finding {
            rule: self.rule(),
            severity: self.severity(),
            devices: Vec::new(),
            message: self.message(),
            fix: self.fix(),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Reason", 4)?;
        st.serialize_field("rule", self.rule())?;
        st.serialize_field("severity", &self.severity())?;
        st.serialize_field("message", &self.message())?;
        st.serialize_field("fix", &self.fix())?;
        st.end()
    }
}

/// Where one direction's data is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "memory")]
pub enum Where {
    /// In the CMB of the SSD whose domain is `Domain::Cmb { device }`.
    Cmb { device: u32 },
    /// In host memory.
    Host,
}

impl Where {
    pub fn is_cmb(self) -> bool {
        matches!(self, Where::Cmb { .. })
    }
    pub fn domain(self) -> Domain {
        match self {
            Where::Cmb { device } => Domain::Cmb { device },
            Where::Host => Domain::HostMemory,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Where::Cmb { .. } => "CMB",
            Where::Host => "host memory",
        }
    }
}

/// The decision for one namespace over one transport client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacementDecision {
    pub subsystem: String,
    pub nsid: u32,
    pub bdev: String,
    /// `tcp` or `rdma`.
    pub transport: &'static str,
    pub client: Client,
    pub mode: Mode,
    /// Where host-to-controller data (writes) is staged.
    pub writes: Where,
    /// Where controller-to-host data (reads) is staged.
    pub reads: Where,
    /// Every reason, blocking ones first.
    pub reasons: Vec<Reason>,
    /// RDMA: the topology checker's decision for (CMB, NIC).
    pub topology: Option<Decision>,
}

impl PlacementDecision {
    /// Whether any data goes through the CMB.
    pub fn uses_cmb(&self) -> bool {
        self.writes.is_cmb() || self.reads.is_cmb()
    }

    /// `p2p: required` and the decision is host memory: the daemon must not start. (Over TCP only
    /// writes can be staged; a decision that stages them satisfies `required`.)
    pub fn refuses_start(&self) -> bool {
        self.mode == Mode::Required && !self.uses_cmb()
    }

    /// The reasons that keep data out of the CMB.
    pub fn blocking(&self) -> impl Iterator<Item = &Reason> {
        self.reasons
            .iter()
            .filter(|r| r.severity() == Severity::Block)
    }

    /// Add a reason that keeps all data out of the CMB (RDMA: a registration that failed after
    /// the rest permitted it): both directions fall back to host memory.
    pub fn refuse(&mut self, reason: Reason) {
        self.writes = Where::Host;
        self.reads = Where::Host;
        self.reasons.insert(0, reason);
        self.sort();
    }

    fn sort(&mut self) {
        self.reasons.sort_by_key(|r| r.severity());
    }

    /// One line for the log and for a refused start: what was decided and why.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "namespace {} of {} (bdev {}) over {}: writes in {}, reads in {} (p2p: {})",
            self.nsid,
            self.subsystem,
            self.bdev,
            self.transport,
            self.writes.label(),
            self.reads.label(),
            match self.mode {
                Mode::Auto => "auto",
                Mode::Off => "off",
                Mode::Required => "required",
            }
        );
        for r in &self.reasons {
            s.push_str(&format!("; [{}] {}", r.rule(), r.message()));
            if let (Severity::Block, Some(f)) = (r.severity(), r.fix()) {
                s.push_str(&format!(" (fix: {f})"));
            }
        }
        s
    }
}

/// The decision for NVMe/TCP, whose "client" is the CPU: write data may be staged in the CMB
/// (received from the socket straight into the BAR mapping, then committed by the SSD from
/// there with PRPs into its own CMB) when the namespace's bdev is an `nvme` SSD whose CMB is
/// mapped and takes write data (CMBSZ.WDS). Reads stay in host memory.
pub fn decide_tcp(
    subsystem: &str,
    nsid: u32,
    bdev: &str,
    mode: Mode,
    memory: &DeviceMemory,
) -> PlacementDecision {
    let mut d = PlacementDecision {
        subsystem: subsystem.to_owned(),
        nsid,
        bdev: bdev.to_owned(),
        transport: "tcp",
        client: Client::Cpu,
        mode,
        writes: Where::Host,
        reads: Where::Host,
        reasons: Vec::new(),
        topology: None,
    };
    if mode == Mode::Off {
        d.reasons.push(Reason::ConfigOff);
        return d;
    }
    match memory {
        DeviceMemory::NotNvme { kind } => {
            d.reasons.push(Reason::BdevNotNvme { kind: kind.clone() })
        }
        DeviceMemory::NoCmb { pci } => d.reasons.push(Reason::NoCmb { pci: pci.clone() }),
        DeviceMemory::CmbUnusable { pci } => {
            d.reasons.push(Reason::CmbUnusable { pci: pci.clone() })
        }
        DeviceMemory::Cmb(c) if !c.wds => {
            d.reasons.push(Reason::CmbLacksWds { pci: c.pci.clone() })
        }
        DeviceMemory::Cmb(c) if !c.mixed_lists => d
            .reasons
            .push(Reason::CmbNoMixedLists { pci: c.pci.clone() }),
        DeviceMemory::Cmb(c) => {
            let Domain::Cmb { device } = c.domain else {
                // A CMB's facts always carry a CMB domain; anything else is not one.
                d.reasons.push(Reason::CmbUnusable { pci: c.pci.clone() });
                return d;
            };
            d.writes = Where::Cmb { device };
            d.reasons.push(Reason::CpuStaging { pci: c.pci.clone() });
        }
    }
    d.reasons.push(Reason::TcpReadsInHost);
    d.sort();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmb(wds: bool) -> DeviceMemory {
        DeviceMemory::Cmb(CmbFacts {
            pci: "0000:03:00.0".into(),
            domain: Domain::Cmb { device: 4 },
            bytes: 64 << 20,
            rds: true,
            wds,
            mixed_lists: true,
        })
    }

    fn rules(d: &PlacementDecision) -> Vec<&'static str> {
        d.reasons.iter().map(|r| r.rule()).collect()
    }

    #[test]
    fn tcp_auto_with_a_wds_cmb_stages_writes() {
        let d = decide_tcp("nqn.a", 1, "ssd0", Mode::Auto, &cmb(true));
        assert_eq!(d.writes, Where::Cmb { device: 4 });
        assert_eq!(d.writes.domain(), Domain::Cmb { device: 4 });
        assert_eq!(d.reads, Where::Host);
        assert!(d.uses_cmb() && !d.refuses_start());
        assert_eq!(rules(&d), ["tcp_cpu_staging", "tcp_reads_in_host"]);
        assert_eq!(d.blocking().count(), 0);
        let s = d.summary();
        assert!(
            s.contains("writes in CMB, reads in host memory (p2p: auto)"),
            "{s}"
        );
        assert!(s.contains("no NIC DMA"), "{s}");
    }

    #[test]
    fn tcp_required_is_satisfied_by_staged_writes() {
        let d = decide_tcp("nqn.a", 1, "ssd0", Mode::Required, &cmb(true));
        assert!(!d.refuses_start());
    }

    #[test]
    fn tcp_refusals_each_name_their_reason() {
        let cases = [
            (
                DeviceMemory::NotNvme {
                    kind: "malloc".into(),
                },
                "bdev_not_nvme",
                "bdev is not an nvme bdev (malloc)",
            ),
            (
                DeviceMemory::NoCmb {
                    pci: "0000:04:00.0".into(),
                },
                "no_cmb",
                "bdev has no CMB",
            ),
            (
                DeviceMemory::CmbUnusable {
                    pci: "0000:04:00.0".into(),
                },
                "cmb_unusable",
                "could not be enabled",
            ),
            (cmb(false), "cmb_lacks_wds", "CMB lacks WDS"),
            (
                match cmb(true) {
                    DeviceMemory::Cmb(c) => DeviceMemory::Cmb(CmbFacts {
                        mixed_lists: false,
                        ..c
                    }),
                    m => m,
                },
                "cmb_no_mixed_lists",
                "CDPMLS clear",
            ),
        ];
        for (mem, rule, text) in cases {
            for mode in [Mode::Auto, Mode::Required] {
                let d = decide_tcp("nqn.a", 2, "b", mode, &mem);
                assert_eq!((d.writes, d.reads), (Where::Host, Where::Host), "{rule}");
                assert_eq!(d.reasons[0].rule(), rule);
                assert_eq!(d.reasons[0].severity(), Severity::Block);
                assert!(d.reasons[0].fix().is_some(), "{rule} says what to change");
                assert_eq!(d.refuses_start(), mode == Mode::Required, "{rule} {mode:?}");
                let s = d.summary();
                assert!(s.contains(text) && s.contains(&format!("[{rule}]")), "{s}");
                assert!(s.contains("(fix: "), "{s}");
            }
        }
    }

    #[test]
    fn off_is_host_memory_whatever_the_device() {
        let d = decide_tcp("nqn.a", 1, "ssd0", Mode::Off, &cmb(true));
        assert_eq!((d.writes, d.reads), (Where::Host, Where::Host));
        assert_eq!(rules(&d), ["p2p_off"]);
        assert!(!d.refuses_start());
    }

    #[test]
    fn a_failed_registration_refuses_both_directions() {
        let mut d = decide_tcp("nqn.a", 1, "ssd0", Mode::Required, &cmb(true));
        d.transport = "rdma";
        d.reads = Where::Cmb { device: 4 };
        d.refuse(Reason::Registration {
            step: "ibv_reg_dmabuf_mr",
            error: "Operation not supported (EOPNOTSUPP)".into(),
        });
        assert!(!d.uses_cmb() && d.refuses_start());
        assert_eq!(d.reasons[0].rule(), "registration_failed");
        assert!(d.summary().contains("ibv_reg_dmabuf_mr"));
    }

    #[test]
    fn serializes_with_rule_names() {
        let d = decide_tcp("nqn.a", 1, "ssd0", Mode::Auto, &cmb(true));
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["writes"]["memory"], "cmb");
        assert_eq!(v["writes"]["device"], 4);
        assert_eq!(v["reads"]["memory"], "host");
        assert_eq!(v["mode"], "auto");
        assert_eq!(v["client"]["kind"], "cpu");
        assert_eq!(v["reasons"][0]["rule"], "tcp_cpu_staging");
        assert_eq!(v["reasons"][0]["severity"], "info");
    }
}
