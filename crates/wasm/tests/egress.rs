//! Outgoing HTTP runs on a thread the caller starts: the host never places it itself.

use std::sync::{Arc, Mutex};

use ignite_wasm::{SpawnThread, WasmConfig, WasmHost};

fn host() -> (WasmHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WasmConfig::new(dir.path().join("cache"));
    config.max_instances = 4;
    config.max_memory_mb = 64;
    (WasmHost::new(&config).unwrap(), dir)
}

#[test]
fn the_egress_thread_is_started_by_the_callers_spawner_once() {
    let (host, _dir) = host();
    let names = Arc::new(Mutex::new(Vec::new()));
    let spawner = |names: Arc<Mutex<Vec<String>>>| -> SpawnThread {
        Box::new(move |name, body| {
            names.lock().unwrap().push(name.clone());
            std::thread::Builder::new().name(name).spawn(body).map(drop)
        })
    };
    assert!(!host.egress_enabled());
    host.enable_egress(Some(spawner(names.clone()))).unwrap();
    assert!(host.egress_enabled());
    // Idempotent: a second call starts nothing.
    host.enable_egress(Some(spawner(names.clone()))).unwrap();
    assert_eq!(*names.lock().unwrap(), ["ignite-wasm-egress"]);
}

#[test]
fn a_spawner_that_fails_leaves_egress_off() {
    let (host, _dir) = host();
    let failing: SpawnThread = Box::new(|_, _| Err(std::io::Error::other("no namespace")));
    let e = host.enable_egress(Some(failing)).unwrap_err();
    assert_eq!(e.to_string(), "no namespace");
    assert!(!host.egress_enabled());
}

#[test]
fn without_a_spawner_egress_uses_the_servers_network() {
    let (host, _dir) = host();
    host.enable_egress(None::<SpawnThread>).unwrap();
    assert!(host.egress_enabled());
}
