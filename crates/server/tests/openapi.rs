//! The checked-in `openapi.json` is exactly what the code generates. When this fails after an
//! intended API change, regenerate it with `IGNITE_BLESS=1 cargo test -p ignite-server --test openapi`.

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    let generated = ignite_server::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    if std::env::var_os("IGNITE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi.json is out of date with the API code; regenerate it with \
         `IGNITE_BLESS=1 cargo test -p ignite-server --test openapi` and commit it"
    );
    // Every route the CLI relies on is documented.
    for route in [
        "/v1/apps",
        "/v1/apps/{org}/{app}",
        "/v1/apps/{org}/{app}/draft",
        "/v1/apps/{org}/{app}/draft/compile",
        "/v1/apps/{org}/{app}/draft/compile-logs",
        "/v1/apps/{org}/{app}/draft/publish",
        "/v1/apps/{org}/{app}/rollback",
        "/v1/apps/{org}/{app}/invoke",
        "/v1/executions/{id}",
        "/v1/tokens",
    ] {
        assert!(
            generated.contains(&format!("\"{route}\"")),
            "{route} is not documented"
        );
    }
}
