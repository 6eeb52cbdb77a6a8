//! systemd integration: the `sd_notify` protocol, without libsystemd. See docs/install.md.
//!
//! Under `Type=notify` systemd hands the service an `AF_UNIX` datagram socket in
//! `$NOTIFY_SOCKET` and reads newline-separated `KEY=VALUE` assignments from it: `READY=1`
//! ends "activating" (units ordered after dealsync start only then, and `systemctl start`
//! returns only then), `STOPPING=1` says shutdown has begun, `WATCHDOG=1` is a keep-alive
//! (with `WatchdogSec=`, a service that stops sending them is killed and restarted) and
//! `STATUS=` is the one-line text `systemctl status` shows. The socket is a file path, or an
//! abstract socket when it starts with `@` (the `@` stands for the leading NUL byte).
//!
//! Everything here is best effort for the caller: outside systemd (`NOTIFY_SOCKET` unset) every
//! call is a no-op that returns `Ok(false)`, and on non-Unix platforms it always is. Nothing
//! panics on any input. The functions that take their inputs explicitly ([`notify_to`],
//! [`watchdog_interval_from`]) are the ones under test; the others read the environment.

use std::io;
use std::time::Duration;

/// How long one notification may block when systemd's socket queue is full. The calls come from
/// async code (the worker loop's keep-alive), so a stalled service manager must not hold a
/// runtime thread for long; a lost keep-alive is covered by sending at half the timeout.
#[cfg(unix)]
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`.
///
/// Returns `Ok(false)` when `NOTIFY_SOCKET` is unset or empty (not started by systemd as a
/// notify service) and on non-Unix platforms, `Ok(true)` once the datagram is sent.
pub fn notify(state: &str) -> io::Result<bool> {
    #[cfg(unix)]
    {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(false),
            Some(s) if s.is_empty() => Ok(false),
            Some(s) => {
                let socket = s.into_string().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
                })?;
                notify_to(&socket, state).map(|()| true)
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = state;
        Ok(false)
    }
}

/// Sends `state` as one datagram to the notification socket `socket`: an absolute path, or
/// `@name` for the abstract socket `name` (Linux only).
///
/// Fails with `InvalidInput` for any other address form (such as a relative path), and with
/// the OS error when the socket does not exist or does not accept the datagram.
#[cfg(unix)]
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    use std::os::unix::net::UnixDatagram;

    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let sent = if let Some(name) = socket.strip_prefix('@') {
        send_abstract(&sock, name, state.as_bytes())?
    } else if socket.starts_with('/') {
        sock.send_to(state.as_bytes(), socket)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("notification socket {socket:?} is neither an absolute path nor @abstract"),
        ));
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram was truncated",
        ));
    }
    Ok(())
}

/// Not supported off Unix: there is no systemd to notify.
#[cfg(not(unix))]
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let _ = (socket, state);
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "sd_notify needs Unix sockets",
    ))
}

#[cfg(target_os = "linux")]
fn send_abstract(
    sock: &std::os::unix::net::UnixDatagram,
    name: &str,
    buf: &[u8],
) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(buf, &addr)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn send_abstract(
    _sock: &std::os::unix::net::UnixDatagram,
    _name: &str,
    _buf: &[u8],
) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract notification sockets exist only on Linux",
    ))
}

/// `READY=1` with a status line: startup is complete (store open, listener bound, pollers
/// started). Under `Type=notify`, `systemctl start` waits for this.
pub fn ready(status_line: &str) -> io::Result<bool> {
    notify(&format!("READY=1\nSTATUS={}", one_line(status_line)))
}

/// `STOPPING=1`: shutdown has begun (in-flight work is draining). Send it on SIGTERM, before
/// the drain, so systemd shows the unit as "deactivating" rather than hung.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1\nSTATUS=stopping: finishing in-flight work")
}

/// `WATCHDOG=1`: a keep-alive. Send it from the loop whose liveness matters (the worker loop),
/// every [`watchdog_interval`], so a stuck loop stops the keep-alives and systemd restarts us.
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// `STATUS=...`: the one-line text `systemctl status` shows. Line breaks in `msg` become
/// spaces (a newline would start a new assignment in the protocol).
pub fn status(msg: &str) -> io::Result<bool> {
    notify(&format!("STATUS={}", one_line(msg)))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How often to send [`watchdog`] keep-alives, or `None` when systemd's watchdog is not
/// enabled for this process (reads `WATCHDOG_USEC` and `WATCHDOG_PID`).
///
/// This is half of `WatchdogSec=`, as `sd_watchdog_enabled(3)` recommends: one late or lost
/// keep-alive (a slow loop iteration, scheduling jitter, a full socket queue) then does not
/// get a healthy service killed; only a loop stuck for the whole timeout does.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from explicit values: `usec` is `WATCHDOG_USEC` (the timeout in
/// microseconds), `pid` is `WATCHDOG_PID` (when set, the watchdog is meant for that process
/// only: a child that inherited the environment must not answer for its parent).
///
/// `None` when `usec` is missing, not a positive integer or infinite (`u64::MAX`), or when `pid`
/// is set and is not `my_pid` (garbage included). Never returns a zero duration, so the result
/// can go straight into a timer.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok()?;
    if usec == 0 || usec == u64::MAX {
        return None;
    }
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros((usec / 2).max(1)))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_exact_datagram_to_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let socket = path.to_str().unwrap();

        notify_to(socket, "READY=1\nSTATUS=syncing").unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=syncing");

        notify_to(socket, "WATCHDOG=1").unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;

        let name = format!(
            "dealsync-test-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();

        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        for socket in ["", "relative/notify", "@", "/nonexistent/dealsync/notify"] {
            assert!(notify_to(socket, "READY=1").is_err(), "{socket:?}");
        }
        let too_long = format!("/{}", "x".repeat(200));
        assert!(notify_to(&too_long, "READY=1").is_err());
    }

    #[test]
    fn status_lines_stay_one_assignment() {
        assert_eq!(one_line("a\nREADY=1\r\nb"), "a READY=1  b");
    }

    #[test]
    fn watchdog_interval_parsing() {
        let me = 4242;
        assert_eq!(watchdog_interval_from(None, None, me), None);
        assert_eq!(watchdog_interval_from(Some(""), None, me), None);
        assert_eq!(watchdog_interval_from(Some("garbage"), None, me), None);
        assert_eq!(watchdog_interval_from(Some("-5"), None, me), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, me), None);
        let infinity = u64::MAX.to_string();
        assert_eq!(watchdog_interval_from(Some(&infinity), None, me), None);

        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_from(Some("30000000"), None, me), half);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("4242"), me),
            half
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("1"), me),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("x"), me),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("1"), None, me),
            Some(Duration::from_micros(1))
        );
    }
}
