//! The server of the end-to-end tests' container images: HTTP/1.1 on $PORT (keep-alive), one
//! thread per connection, std only. Every answer is JSON describing the request and the
//! process; some paths misbehave on purpose. `MODE=exit` exits at start, `MODE=silent` never
//! listens.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    match std::env::var("MODE").as_deref() {
        Ok("exit") => {
            eprintln!("boom: refusing to start");
            std::process::exit(7);
        }
        Ok("silent") => loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        },
        _ => {}
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    println!("listening on {port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or("")
                .to_string()
        };
        if std::env::var("MODE").as_deref() == Ok("bench") {
            // The benchmark's answer: no look at the process, the platform's cost alone.
            let answer = b"{\"message\":\"Hello from the image\"}";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            let mut response = head.into_bytes();
            response.extend_from_slice(answer);
            if out.write_all(&response).is_err() {
                return;
            }
            continue;
        }
        let (status, extra) = match path {
            "/crash" => std::process::exit(3),
            "/sleep" => {
                let ms: u64 = param("ms").parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                (200, String::new())
            }
            "/alloc" => {
                let mut hold: Vec<Vec<u8>> = Vec::new();
                loop {
                    hold.push(vec![1u8; 8 << 20]);
                }
            }
            "/log" => {
                println!("to stdout: {}", param("say"));
                eprintln!("to stderr: {}", param("say"));
                (200, String::new())
            }
            "/file" => {
                let path = param("path").replace("%2F", "/");
                let read = std::fs::read_to_string(&path);
                let meta = std::fs::symlink_metadata(&path);
                (
                    200,
                    format!(
                        ",\"file\":{{\"read\":{},\"error\":{},\"mode\":{}}}",
                        json(read.as_deref().unwrap_or("")),
                        json(&read.err().map(|e| e.to_string()).unwrap_or_default()),
                        meta.map(|m| {
                            use std::os::unix::fs::PermissionsExt;
                            m.permissions().mode()
                        })
                        .unwrap_or(0)
                    ),
                )
            }
            "/write" => {
                let path = param("path").replace("%2F", "/");
                let written = std::fs::write(&path, b"x");
                (
                    200,
                    format!(
                        ",\"write\":{}",
                        json(&written.err().map(|e| e.to_string()).unwrap_or("ok".into()))
                    ),
                )
            }
            "/status" => (param("code").parse().unwrap_or(500), String::new()),
            // Answers, then closes the kept-alive connection `ms` later, as a server's idle
            // timeout does.
            "/hangup" => {
                let ms: u64 = param("ms").parse().unwrap_or(0);
                let body = "{\"hangup\":true}";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = out.write_all(response.as_bytes());
                std::thread::sleep(std::time::Duration::from_millis(ms));
                return;
            }
            _ => (200, String::new()),
        };
        let pids: Vec<String> = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    .collect()
            })
            .unwrap_or_default();
        let env: Vec<String> = ["PORT", "GREETING", "K_SERVICE", "K_REVISION", "FROM_APP"]
            .iter()
            .map(|k| format!("{}:{}", json(k), json(&std::env::var(k).unwrap_or_default())))
            .collect();
        let headers_json: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("{}:{}", json(k), json(v)))
            .collect();
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            })
            .unwrap_or_default();
        let answer = format!(
            "{{\"method\":{},\"path\":{},\"query\":{},\"body\":{},\"headers\":{{{}}},\"env\":{{{}}},\"uid\":{},\"cwd\":{},\"args\":{},\"pids\":{}{}}}",
            json(&method),
            json(path),
            json(query),
            json(&String::from_utf8_lossy(&body)),
            headers_json.join(","),
            env.join(","),
            json(&uid),
            json(&std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()),
            json(&std::env::args().skip(1).collect::<Vec<_>>().join(" ")),
            pids.len(),
            extra
        );
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nx-echo: yes\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
