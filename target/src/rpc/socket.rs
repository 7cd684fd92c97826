//! Creating the control socket safely.
//!
//! The socket is what lets anyone who can open it reconfigure the target, so:
//! - an existing path is refused when it is a symlink (it could point anywhere), not a socket,
//!   or owned by another user; an existing socket of ours is refused while a daemon answers on
//!   it (two daemons on one socket), and replaced when nothing does (left over from a crash);
//! - the socket is bound in a fresh private directory (mode 0700) beside the final path,
//!   made mode 0600 there, and only then renamed into place, so it is never reachable with a
//!   wider mode and no umask (process-wide, shared with every thread) is touched.

use anyhow::{bail, Context};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Bind a listening Unix socket at `path` (mode 0600), following the rules above.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = path
        .file_name()
        .with_context(|| format!("RPC socket {}: no file name", path.display()))?;
    check_existing(path)?;
    let euid = rustix_euid();
    // A private directory for the bind: unique name, 0700, ours.
    let mut tmp = None;
    for n in 0..100u32 {
        let d = parent.join(format!(
            ".{}.{}.{n}.tmp",
            file.to_string_lossy(),
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => {
                tmp = Some(d);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "RPC socket {}: cannot create a directory in {}",
                        path.display(),
                        parent.display()
                    )
                })
            }
        }
    }
    let tmp =
        tmp.with_context(|| format!("RPC socket {}: no free temporary name", path.display()))?;
    let result = (|| {
        let meta = std::fs::symlink_metadata(&tmp)?;
        if !meta.is_dir() || meta.uid() != euid {
            bail!("temporary directory {} was replaced", tmp.display());
        }
        let inner = tmp.join("sock");
        let l = UnixListener::bind(&inner)
            .with_context(|| format!("cannot bind {}", inner.display()))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        // rename(2) replaces a stale socket atomically and never follows a symlink at `path`.
        std::fs::rename(&inner, path)
            .with_context(|| format!("cannot move the socket to {}", path.display()))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.with_context(|| format!("RPC socket {}", path.display()))
}

fn rustix_euid() -> u32 {
    // The effective uid of this process is the owner of files it creates.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn check_existing(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("RPC socket {}", path.display())),
    };
    let p = path.display();
    if meta.file_type().is_symlink() {
        bail!("RPC socket {p}: the path is a symbolic link; refusing to use it");
    }
    if !meta.file_type().is_socket() {
        bail!("RPC socket {p}: the path exists and is not a socket; refusing to replace it");
    }
    if meta.uid() != rustix_euid() {
        bail!(
            "RPC socket {p}: owned by uid {}, not by this user; refusing to use it",
            meta.uid()
        );
    }
    if UnixStream::connect(path).is_ok() {
        bail!(
            "RPC socket {p} is in use by another running daemon (give another path with \
             --rpc-socket or rpc.socket)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nvmfd-sock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mode_0600_and_stale_replaced_and_in_use_refused() {
        let d = tmpdir("a");
        let p = d.join("rpc.sock");
        let l = bind(&p).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        let e = bind(&p).unwrap_err();
        assert!(format!("{e:#}").contains("in use"), "{e:#}");
        drop(l);
        // Nothing listens any more: the stale socket is replaced.
        let _l2 = bind(&p).unwrap();
        // No temporary directory is left behind.
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("rpc.sock")]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn socket_of_another_user_refused() {
        if rustix_euid() != 0 {
            return; // only root can make a file owned by someone else
        }
        let d = tmpdir("c");
        let p = d.join("theirs.sock");
        let l = UnixListener::bind(&p).unwrap();
        drop(l);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = bind(&p).unwrap_err();
        assert!(format!("{e:#}").contains("owned by uid 65534"), "{e:#}");
        assert_eq!(
            std::fs::symlink_metadata(&p).unwrap().uid(),
            65534,
            "left alone"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlink_and_regular_file_refused() {
        let d = tmpdir("b");
        let target = d.join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = bind(&link).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        let e = bind(&target).unwrap_err();
        assert!(format!("{e:#}").contains("not a socket"), "{e:#}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
