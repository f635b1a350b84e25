//! The dependency fetch's only way out: an HTTP `CONNECT` proxy on a Unix socket that tunnels to
//! the registry's hosts (crates.io's, PyPI's for a Python app's `pip install`, the Go module
//! proxy's for a Go app's `go mod download`, or JSR's, npm's and deno.land's for a Deno app's
//! `deno install`) and refuses
//! everything else.
//!
//! `cargo fetch` runs in a network namespace of its own (`dodil ignite __fetch`, see
//! `ignite_sandbox::jail::fetch_exec`) with no route anywhere; a forwarder inside carries its
//! connections to this socket. Cargo speaks HTTPS through the tunnel, end to end with the
//! registry: the proxy sees host names and byte counts, never contents.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// crates.io's sparse index and its download host.
pub const CRATES_IO: &[&str] = &["index.crates.io:443", "static.crates.io:443"];
/// PyPI's index (the simple API) and its file host: what `pip install` reaches.
pub const PYPI: &[&str] = &["pypi.org:443", "files.pythonhosted.org:443"];
/// The Go module proxy and its checksum database: what a Go app's `go mod download` reaches
/// (`GOPROXY=https://proxy.golang.org`, `GOSUMDB=sum.golang.org`, no direct VCS fetches).
pub const GO_PROXY: &[&str] = &["proxy.golang.org:443", "sum.golang.org:443"];
/// What `deno install` reaches for a Deno app's `jsr:`, `npm:` and `https://deno.land/` imports:
/// JSR, the npm registry (metadata and tarballs) and deno.land.
pub const DENO: &[&str] = &["jsr.io:443", "registry.npmjs.org:443", "deno.land:443"];

/// The longest request head read before refusing.
const MAX_HEAD: usize = 8 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A running proxy; stops and removes its socket when dropped.
#[derive(Debug)]
pub struct RegistryProxy {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryProxy {
    /// Listens on `path` (replacing a stale socket there), tunnelling to `allowed`
    /// (`host:port`, compared exactly). Must be called inside a tokio runtime.
    pub fn start(path: &Path, allowed: &[&str]) -> io::Result<RegistryProxy> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let allowed: Vec<String> = allowed.iter().map(|a| a.to_ascii_lowercase()).collect();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let allowed = allowed.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &allowed).await {
                        tracing::debug!("registry proxy: {e}");
                    }
                });
            }
        });
        Ok(RegistryProxy {
            path: path.to_path_buf(),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(mut client: UnixStream, allowed: &[String]) -> io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request head"))??;
    let Some(target) = connect_target(&head) else {
        return refuse(
            &mut client,
            "405 Method Not Allowed",
            "only CONNECT is served",
        )
        .await;
    };
    if !allowed.contains(&target) {
        tracing::warn!("the dependency fetch asked for {target}, which is not the registry");
        let why = format!(
            "the dependency fetch may only reach the registry ({}); refused {target}",
            allowed.join(", ")
        );
        return refuse(&mut client, "403 Forbidden", &why).await;
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return refuse(&mut client, "502 Bad Gateway", &format!("{target}: {e}")).await;
        }
        Err(_) => return refuse(&mut client, "504 Gateway Timeout", &target).await,
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let mut upstream = upstream;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Reads up to the blank line that ends a request head (a CONNECT has no body).
async fn read_head(client: &mut UnixStream) -> io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    // Byte by byte: nothing past the head may be consumed (the tunnel's first bytes follow).
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        if client.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-head",
            ));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// `host:port` of a `CONNECT host:port HTTP/1.x` request, lowercased.
fn connect_target(head: &str) -> Option<String> {
    let mut words = head.lines().next()?.split_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let target = words.next()?;
    words
        .next()
        .filter(|v| v.starts_with("HTTP/1."))
        .map(|_| target.to_ascii_lowercase())
}

async fn refuse(client: &mut UnixStream, status: &str, why: &str) -> io::Result<()> {
    let body = format!("ignite: {why}\n");
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(reply.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connect_requests_name_a_target() {
        assert_eq!(
            connect_target("CONNECT Index.Crates.io:443 HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("index.crates.io:443")
        );
        assert_eq!(connect_target("GET http://evil/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(connect_target("CONNECT evil:443\r\n\r\n"), None);
    }

    async fn ask(path: &Path, request: &str) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn tunnels_to_allowed_targets_and_refuses_the_rest() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let allowed = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let proxy = RegistryProxy::start(&dir.path().join("p.sock"), &[allowed.as_str()]).unwrap();

        let refused = ask(proxy.path(), "CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n").await;
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
        assert!(refused.contains("refused 10.0.0.1:443"), "{refused}");
        let wrong = ask(proxy.path(), "GET http://example.com/ HTTP/1.1\r\n\r\n").await;
        assert!(wrong.starts_with("HTTP/1.1 405"), "{wrong}");

        let mut s = UnixStream::connect(proxy.path()).await.unwrap();
        s.write_all(format!("CONNECT {allowed} HTTP/1.1\r\n\r\nping").as_bytes())
            .await
            .unwrap();
        let mut reply = vec![0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"ping") {
            let n = s.read(&mut reply).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&reply[..n]);
        }
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
}
