//! `nvmfd setup`: bind an NVMe SSD to vfio-pci for the `nvme` bdev, give it back, show status.
//! The work is in `nvmfd_nvme::setup`; this is the command line.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SetupArgs {
    /// PCI address of the SSD (DDDD:BB:DD.F).
    #[arg(long)]
    pci: Option<String>,
    /// Give the device back to the kernel's nvme driver instead of binding vfio-pci.
    #[arg(long, requires = "pci")]
    reset: bool,
    /// List NVMe controllers: driver, IOMMU group, NUMA node, CMB.
    #[arg(long, conflicts_with_all = ["pci", "reset"])]
    status: bool,
    /// Reserve this much memory as 2 MiB hugepages (e.g. 1GiB, 512MiB).
    #[arg(long, value_parser = parse_size)]
    hugemem: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("G", 1 << 30),
        ("M", 1 << 20),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((t, 1));
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("'{s}' is not a size (e.g. 1GiB, 512MiB)"))
}

pub fn run(a: SetupArgs) -> ExitCode {
    let mut ok = true;
    let mut did = false;
    let mut report = |r: std::io::Result<String>| match r {
        Ok(m) => println!("{m}"),
        Err(e) => {
            eprintln!("nvmfd setup: {e}");
            ok = false;
        }
    };
    if a.status {
        print!("{}", nvmfd_nvme::setup::status());
        did = true;
    }
    if let Some(bytes) = a.hugemem {
        report(nvmfd_nvme::setup::hugemem(bytes));
        did = true;
    }
    if let Some(pci) = &a.pci {
        report(if a.reset {
            nvmfd_nvme::setup::reset(pci)
        } else {
            nvmfd_nvme::setup::bind(pci)
        });
        did = true;
    }
    if !did {
        eprintln!(
            "nvmfd setup: nothing to do: give --pci BDF [--reset], --status or --hugemem SIZE"
        );
        return ExitCode::from(2);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
