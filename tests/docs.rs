//! The contributor's map stays true: every path `ARCHITECTURE.md` (and the README) names exists.

use std::path::Path;

/// The repository paths quoted in `text`: names that start with one of `roots`.
fn paths(text: &str, roots: &[&str]) -> Vec<String> {
    text.split(['`', '*', '(', ')', '[', ']', ' ', '\n', ','])
        .map(|w| w.trim_end_matches(['.', ':', ';']))
        .filter(|w| roots.iter().any(|r| w.starts_with(r)))
        .map(|w| w.split("::").next().unwrap_or(w).to_string())
        .collect()
}

#[test]
fn every_path_the_architecture_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The README also speaks of a user's project (`src/lib.rs`): only the tree's own roots there.
    let everything: &[&str] = &["crates/", "src/", "tests/", "benches/", "examples/", ".ci/"];
    let ours: &[&str] = &["crates/", "tests/", "benches/", "examples/", ".ci/"];
    for (doc, roots) in [("ARCHITECTURE.md", everything), ("README.md", ours)] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let named = paths(&text, roots);
        assert!(
            doc != "ARCHITECTURE.md" || named.len() > 20,
            "{doc}: {named:?}"
        );
        let missing: Vec<&String> = named.iter().filter(|p| !root.join(p).exists()).collect();
        assert!(
            missing.is_empty(),
            "{doc} names paths that do not exist: {missing:?}"
        );
    }
}
