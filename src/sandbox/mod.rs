//! The one module that talks to the OS about the process itself: file permission rules,
//! resource limits, and the listening sockets systemd passes in.
//!
//! Only `activation` contains `unsafe` (adopting inherited file descriptors).

pub mod activation;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Process hardening that needs no privilege: no core dumps (they would hold secrets),
/// not ptrace-attachable by same-uid processes, and a private umask.
pub fn harden_process() -> Result<(), String> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| format!("cannot disable core dumps: {e}"))?;
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("cannot clear the dumpable flag: {e}"))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    Ok(())
}

/// Give the calling thread the lowest CPU priority (nice 19). Used by the argon2 threads,
/// so a login flood cannot take the CPU from chats in progress; they still get every
/// cycle nobody else wants.
pub fn lower_thread_priority() -> Result<(), String> {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19)
        .map_err(|e| format!("cannot lower the thread's priority: {e}"))
}

/// Make an IPv6 socket IPv6-only (no IPv4-mapped peers).
pub fn set_ipv6_only(sock: &impl std::os::fd::AsFd) -> Result<(), String> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Ipv6V6Only, &true)
        .map_err(|e| format!("cannot set IPV6_V6ONLY: {e}"))
}

/// Raise the open-file limit to the hard limit (many idle visitor connections).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

fn owner_ok(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// A secret (key) file: owned by root or us, not readable or writable by group or others.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: key file is accessible by group or others (mode {mode:04o}); rule: secret files must be 0600 or stricter",
            path.display()
        ));
    }
    if !owner_ok(m.uid()) {
        return Err(format!(
            "{}: owned by uid {}; rule: secret files must be owned by root or the service user",
            path.display(),
            m.uid()
        ));
    }
    Ok(())
}

/// A policy or config file (or its directory): not writable by group or others.
pub fn check_policy_file(path: &Path) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {mode:04o}); rule: policy files must not be writable by anyone but their owner",
            path.display()
        ));
    }
    if !owner_ok(m.uid()) {
        return Err(format!(
            "{}: owned by uid {}; rule: policy files must be owned by root or the service user",
            path.display(),
            m.uid()
        ));
    }
    Ok(())
}

/// The state directory: exists, a directory, mode 0700 exactly or stricter.
pub fn check_state_dir(path: &Path) -> Result<(), String> {
    let m =
        std::fs::metadata(path).map_err(|e| format!("{}: state directory: {e}", path.display()))?;
    if !m.is_dir() {
        return Err(format!(
            "{}: state directory is not a directory",
            path.display()
        ));
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: state directory mode {mode:04o}; rule: the state directory must be 0700",
            path.display()
        ));
    }
    if !owner_ok(m.uid()) {
        return Err(format!(
            "{}: state directory owned by uid {}; rule: it must belong to the service user",
            path.display(),
            m.uid()
        ));
    }
    Ok(())
}

/// Database file: mode 0600 or stricter (set it on files we create, refuse wider).
pub fn restrict_file(path: &Path) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "database file mode {mode:04o}; rule: the database must be 0600"
        ));
    }
    Ok(())
}

/// Create a private directory (0700) if missing.
pub fn ensure_private_dir(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Write a file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_all()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
