//! A real registry for the tests: Debian's `docker-registry` (the CNCF distribution registry)
//! on a loopback port of its own.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ignite_image::{Credentials, ImageConfig, RegistryAccess};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;

use super::{E, gzip, tar};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A `docker-registry` serving on a loopback port of its own, stopped on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY).exists(),
            "{REGISTRY} is missing: apt-get install -y docker-registry"
        );
        let mut dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let auth = match user {
            Some((name, password)) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{name}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: ignite-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        // The registry does not report a port it picked: pick one, and try again if another
        // process took it in between.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: {addr}\n{auth}",
                    dir.path().join("storage").display()
                ),
            )
            .expect("config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let child = Command::new(REGISTRY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut registry = Registry { child, addr, dir };
            if registry.wait_ready() {
                return registry;
            }
            dir = registry.stop();
        }
        panic!("docker-registry did not start");
    }

    /// Waits (at most 10 s) until `/v2/` answers; false if the registry exited.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("docker-registry exited ({status}):\n{}", self.log());
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut answer = [0u8; 12];
                if s.write_all(request.as_bytes()).is_ok()
                    && s.read_exact(&mut answer).is_ok()
                    && answer.starts_with(b"HTTP/1.")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not answer in 10 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn access(&self, credentials: Option<(&str, &str)>) -> RegistryAccess {
        let mut map = HashMap::new();
        if let Some((username, password)) = credentials {
            map.insert(
                self.addr.clone(),
                Credentials {
                    username: username.into(),
                    password: password.into(),
                },
            );
        }
        RegistryAccess {
            insecure: vec![self.addr.clone()],
            credentials: map,
            ..RegistryAccess::default()
        }
    }

    /// Pushes a FROM-scratch-like image: one gzip layer with an executable and a file.
    pub async fn push(&self, repository: &str, auth: RegistryAuth) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let layer = gzip(&tar(&[
            E::File("bin/app", b"#!/bin/app\n", 0o755),
            E::File("srv/hello.txt", b"hello from the registry", 0o644),
        ]));
        let config = super::config_json(&ImageConfig {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--port".into(), "8080".into()],
            env: vec![("PORT".into(), "8080".into())],
            working_dir: Some("/srv".into()),
            exposed_ports: vec![8080],
            ..ImageConfig::default()
        });
        let reference: oci_client::Reference = format!("{}/{repository}", self.addr)
            .parse()
            .expect("reference");
        client
            .push(
                &reference,
                &[ImageLayer::oci_v1_gzip(layer, None)],
                Config::oci_v1(config, None),
                &auth,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("push: {e}\n{}", self.log()));
        reference.whole()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
