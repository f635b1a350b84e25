//! The dependency fetch's network: a namespace of its own whose only way out is the server's
//! registry proxy, reached through a forwarder on loopback.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use super::{Never, check};

/// The dependency fetch's network: runs `program` in a network namespace of its own whose only
/// way out is `proxy`, a Unix socket the server answers on (see `ignite_builder::RegistryProxy`,
/// which lets through the registry's hosts and nothing else). Inside, a forwarder listens on
/// loopback and `CARGO_HTTP_PROXY` points cargo at it; the program has no other route. It keeps
/// the caller's files and user. The builder's fetch no longer runs this way but in a jail with
/// [`JailNetwork::Proxy`], the same network plus a mount view of the project alone.
///
/// The whole of `dodil ignite __fetch`; returns only on failure, else exits with the program's
/// status. Must run as root (it creates the namespace).
pub fn fetch_exec(proxy: &Path, program: &OsStr, args: &[OsString]) -> io::Error {
    match fetch_run(proxy, program, args) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn fetch_run(proxy: &Path, program: &OsStr, args: &[OsString]) -> io::Result<Never> {
    let (listener, port) = proxied_network()?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .env("CARGO_HTTP_PROXY", format!("http://127.0.0.1:{port}"))
        .spawn()?;
    forward_all(listener, proxy.to_path_buf());
    let status = child.wait()?;
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    std::process::exit(code)
}

/// Moves this process into a network namespace of its own with loopback up, and listens there
/// for the forwarder. Call while single-threaded.
pub(super) fn proxied_network() -> io::Result<(std::net::TcpListener, u16)> {
    check(
        // SAFETY: unshare has no memory-safety preconditions; no thread exists yet.
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        "creating the fetch's network namespace",
    )?;
    crate::netns::loopback_up_here()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Carries every connection made to `listener` to `proxy`, on threads of their own.
pub(super) fn forward_all(listener: std::net::TcpListener, proxy: PathBuf) {
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let proxy = proxy.clone();
            std::thread::spawn(move || forward(client, &proxy));
        }
    });
}

/// Listens, inside the namespace [`proxied_network`] made, on each of `targets` (`host:port` on
/// loopback), for [`tunnel_all`]. Call while single-threaded, after [`proxied_network`].
pub(super) fn loopback_tunnels(
    targets: &[String],
) -> io::Result<Vec<(std::net::TcpListener, String)>> {
    targets
        .iter()
        .map(|target| {
            let listener = std::net::TcpListener::bind(target.as_str()).map_err(|e| {
                io::Error::new(e.kind(), format!("listening on {target} in the jail: {e}"))
            })?;
            Ok((listener, target.clone()))
        })
        .collect()
}

/// Carries every connection made to `listener` through `proxy` to `target`: a `CONNECT
/// target` first, then the bytes both ways; a refused `CONNECT`'s answer (an HTTP response
/// that says why) goes to the client as the reply to whatever it sent, and the connection
/// closes.
pub(super) fn tunnel_all(listener: std::net::TcpListener, proxy: PathBuf, target: String) {
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (proxy, target) = (proxy.clone(), target.clone());
            std::thread::spawn(move || match connect_through(&proxy, &target) {
                Some(Ok(upstream)) => relay(client, upstream),
                Some(Err((head, mut upstream))) => {
                    let mut client = client;
                    use std::io::Write;
                    if client.write_all(&head).is_ok() {
                        let _ = io::copy(&mut upstream, &mut client);
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                }
                None => {}
            });
        }
    });
}

/// A tunnel to `target` through the proxy, once it answered `200`; else its answer's head and
/// the connection its body follows on.
type Tunnel = Result<std::os::unix::net::UnixStream, (Vec<u8>, std::os::unix::net::UnixStream)>;

fn connect_through(proxy: &Path, target: &str) -> Option<Tunnel> {
    use std::io::{Read, Write};
    let mut upstream = std::os::unix::net::UnixStream::connect(proxy).ok()?;
    upstream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: what follows the head is the tunnel's.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8 << 10 || upstream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let ok = head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200");
    Some(if ok {
        Ok(upstream)
    } else {
        Err((head, upstream))
    })
}

/// Carries one connection of the program's to the server's proxy and back.
fn forward(client: std::net::TcpStream, proxy: &Path) {
    if let Ok(upstream) = std::os::unix::net::UnixStream::connect(proxy) {
        relay(client, upstream);
    }
}

/// Copies both ways between a connection of the program's and one to the proxy, until both
/// ends are done.
fn relay(client: std::net::TcpStream, upstream: std::os::unix::net::UnixStream) {
    let (Ok(mut client_r), Ok(mut upstream_w)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut client_r, &mut upstream_w);
        let _ = upstream_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut upstream_r, mut client_w) = (upstream, client);
    let _ = io::copy(&mut upstream_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
