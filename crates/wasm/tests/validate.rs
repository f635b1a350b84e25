//! What `precompile` refuses, and how it says so (the server shows these in the compile log).

use ignite_wasm::{WasmConfig, WasmHost};

fn host() -> (WasmHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = WasmConfig::new(dir.path().join("cache"));
    config.max_instances = 4;
    config.max_memory_mb = 64;
    (WasmHost::new(&config).unwrap(), dir)
}

#[test]
fn bytes_that_are_not_wasm_are_not_a_valid_component() {
    let (host, _dir) = host();
    let e = host
        .precompile("sha256:garbage", b"#!/bin/sh\necho not wasm\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid component"), "{e}");
}

#[test]
fn a_core_module_is_refused_with_the_target_to_build_for() {
    let (host, _dir) = host();
    // The smallest core module: magic and version 1, no sections.
    let e = host
        .precompile("sha256:core", b"\0asm\x01\0\0\0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("core WebAssembly module"), "{e}");
    assert!(e.contains("wasm32-wasip2"), "{e}");
}
