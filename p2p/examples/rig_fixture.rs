//! Writes the QEMU rig guest's tree (see `fixture::rig_guest`) into a directory, to try
//! `nvmfd topology --sysfs-root DIR/sys --proc-root DIR/proc` without the hardware:
//! `cargo run -p nvmfd-p2p --example rig_fixture -- DIR`.

use nvmfd_p2p::topology::fixture::rig_guest;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: rig_fixture DIR (DIR must not exist yet)");
        return ExitCode::from(2);
    };
    if dir.exists() {
        eprintln!("{} exists; give a new directory", dir.display());
        return ExitCode::from(2);
    }
    match rig_guest(&dir) {
        Ok(_) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
