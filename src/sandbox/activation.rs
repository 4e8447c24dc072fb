//! systemd socket activation: adopt the listening sockets named in `LISTEN_FDNAMES`.
//!
//! The only `unsafe` in Palisade lives here: turning an inherited file descriptor number
//! into an owned socket. Each descriptor is checked to be a listening stream socket first.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

const SD_LISTEN_FDS_START: RawFd = 3;

/// Listening sockets passed by systemd, by `FileDescriptorName=`. Empty when not
/// socket-activated. The environment variables are removed so children do not inherit them.
pub fn take_listeners() -> Result<HashMap<String, Vec<std::net::TcpListener>>, String> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count: Option<RawFd> = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let mut out: HashMap<String, Vec<std::net::TcpListener>> = HashMap::new();
    let (true, Some(count)) = (pid_ok, count) else {
        return Ok(out);
    };
    if !(0..=64).contains(&count) {
        return Err(format!("LISTEN_FDS={count} is out of range"));
    }
    let names: Vec<&str> = names.split(':').collect();
    for i in 0..count {
        let fd = SD_LISTEN_FDS_START + i;
        // Check before adopting: it must be an open, listening TCP socket.
        let listening = nix::sys::socket::getsockopt(
            &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::sys::socket::sockopt::AcceptConn,
        )
        .map_err(|e| format!("inherited fd {fd} is not a socket: {e}"))?;
        if !listening {
            return Err(format!("inherited fd {fd} is not a listening socket"));
        }
        // SAFETY: systemd passed us fds START..START+count; we checked this one is an open
        // listening socket, and we adopt each number exactly once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = std::net::TcpListener::from(owned);
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("inherited fd {fd}: {e}"))?;
        let name = names
            .get(i as usize)
            .copied()
            .unwrap_or("unknown")
            .to_string();
        out.entry(name).or_default().push(listener);
    }
    Ok(out)
}
