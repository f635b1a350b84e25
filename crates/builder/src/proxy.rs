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
//!
//! A plain-HTTP request in absolute form (`GET http://host:port/path HTTP/1.1`, what an HTTP
//! client sends its proxy for an `http://` URL: buildah's, for a registry the operator marked
//! insecure) is forwarded to an allowed `host:port` the same way, one request per connection.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

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

/// The same proxy on a loopback TCP port, for the server's own pulls (an HTTP client's
/// `https_proxy`): every connection a pull makes — a redirect to a blob store, a token realm —
/// goes to an allowed host or nowhere. Stops when dropped.
#[derive(Debug)]
pub struct LoopbackProxy {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LoopbackProxy {
    /// Listens on a free loopback port, tunnelling to `allowed` (`host:port`, compared
    /// exactly). Must be called inside a tokio runtime.
    pub async fn start(allowed: &[String]) -> io::Result<LoopbackProxy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
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
        Ok(LoopbackProxy { addr, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LoopbackProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve<S>(mut client: S, allowed: &[String]) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request head"))??;
    let (target, forward) = match (connect_target(&head), forward_request(&head)) {
        (Some(target), _) => (target, None),
        (None, Some((target, head))) => (target, Some(head)),
        (None, None) => {
            return refuse(
                &mut client,
                "405 Method Not Allowed",
                "only CONNECT and absolute-form http:// requests are served",
            )
            .await;
        }
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
    let mut upstream = upstream;
    let Some(head) = forward else {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    };
    // One request: its head rewritten, its body (if any) after it, the response back until
    // the upstream closes (the head asked it to).
    upstream.write_all(head.as_bytes()).await?;
    let (mut client_r, mut client_w) = tokio::io::split(&mut client);
    let (mut upstream_r, mut upstream_w) = upstream.split();
    let body = tokio::io::copy(&mut client_r, &mut upstream_w);
    let response = tokio::io::copy(&mut upstream_r, &mut client_w);
    tokio::select! {
        r = response => { r?; }
        r = async { body.await?; std::future::pending::<io::Result<u64>>().await } => { r?; }
    }
    client_w.shutdown().await
}

/// Reads up to the blank line that ends a request head (a CONNECT has no body).
async fn read_head(client: &mut (impl tokio::io::AsyncRead + Unpin)) -> io::Result<String> {
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

/// Of an absolute-form plain-HTTP request (`GET http://Host:port/p HTTP/1.1`): its `host:port`
/// (port 80 when none is written), lowercased, and its head rewritten for the origin — the
/// path alone in the request line, the proxy's own headers and the connection's options
/// dropped, `connection: close` added.
fn forward_request(head: &str) -> Option<(String, String)> {
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split(' ');
    let (method, uri, version) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !version.starts_with("HTTP/1.")
    {
        return None;
    }
    let rest = uri
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &uri[7..])?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let target = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            authority.to_ascii_lowercase()
        }
        Some(_) => return None,
        None => format!("{}:80", authority.to_ascii_lowercase()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    // The Host header is the checked target's, whatever the client wrote: a request must not
    // name another virtual host of the allowed address.
    let mut out = format!("{method} {path} {version}\r\nhost: {authority}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").trim();
        if [
            "host",
            "proxy-connection",
            "proxy-authorization",
            "connection",
            "keep-alive",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("connection: close\r\n\r\n");
    Some((target, out))
}

async fn refuse(
    client: &mut (impl tokio::io::AsyncWrite + Unpin),
    status: &str,
    why: &str,
) -> io::Result<()> {
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
    use tokio::net::UnixStream;

    #[test]
    fn only_connect_requests_name_a_target() {
        assert_eq!(
            connect_target("CONNECT Index.Crates.io:443 HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("index.crates.io:443")
        );
        assert_eq!(connect_target("GET http://evil/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(connect_target("CONNECT evil:443\r\n\r\n"), None);
    }

    #[test]
    fn absolute_form_requests_are_rewritten_for_the_origin() {
        let (target, head) = forward_request(
            "GET http://Reg.Example:5000/v2/base/manifests/1 HTTP/1.1\r\nHost: reg.example:5000\r\n\
             Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!(target, "reg.example:5000");
        assert_eq!(
            head,
            "GET /v2/base/manifests/1 HTTP/1.1\r\nhost: Reg.Example:5000\r\nAccept: */*\r\n\
             connection: close\r\n\r\n"
        );
        let (target, head) = forward_request("HEAD http://h HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            (target.as_str(), head.as_str()),
            (
                "h:80",
                "HEAD / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"
            )
        );
        // The client's own Host never reaches the origin: it names the checked target.
        let (_, head) =
            forward_request("GET http://h/ HTTP/1.1\r\nHost: admin.internal\r\n\r\n").unwrap();
        assert!(
            !head.contains("admin.internal") && head.contains("host: h\r\n"),
            "{head}"
        );
        for bad in [
            "GET /relative HTTP/1.1\r\n\r\n",
            "GET https://h/ HTTP/1.1\r\n\r\n",
            "GET http://user@h/ HTTP/1.1\r\n\r\n",
            "GET http://h:x/ HTTP/1.1\r\n\r\n",
            "GET http:// HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(forward_request(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn forwards_plain_http_to_allowed_targets() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let allowed = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
                head.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let proxy = RegistryProxy::start(&dir.path().join("p.sock"), &[allowed.as_str()]).unwrap();
        let mut s = UnixStream::connect(proxy.path()).await.unwrap();
        s.write_all(
            format!("GET http://{allowed}/v2/ HTTP/1.1\r\nHost: {allowed}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(
            got.ends_with(&format!(
                "GET /v2/ HTTP/1.1\r\nhost: {allowed}\r\nconnection: close\r\n\r\n"
            )),
            "{got}"
        );
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
        let wrong = ask(proxy.path(), "GET /v2/ HTTP/1.1\r\n\r\n").await;
        assert!(wrong.starts_with("HTTP/1.1 405"), "{wrong}");
        let plain = ask(proxy.path(), "GET http://example.com/ HTTP/1.1\r\n\r\n").await;
        assert!(plain.starts_with("HTTP/1.1 403"), "{plain}");
        assert!(plain.contains("refused example.com:80"), "{plain}");

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
