//! The main of the builder's jailed test binaries (`harness = false`): each is its own build
//! jail helper (`<binary> ignite __jail …`), so it enters the jail when called as one, and
//! otherwise runs its tests like libtest would (`--list`, a name filter), one after another.

use std::ffi::OsString;
use std::time::Instant;

/// A test: its name and its body (a panic fails it).
pub type Test = (&'static str, fn());

/// Enters the jail or runs `tests` (those the filter chooses). `prerequisite(n)` may refuse to
/// run the `n` chosen ones here (it says why); they need root besides (`what` names them in
/// the message); `setup` runs once they will run, before the first.
pub fn main(
    tests: &[Test],
    what: &str,
    prerequisite: impl FnOnce(usize) -> bool,
    setup: impl FnOnce(),
) {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.len() > 2 && args[1] == "ignite" && args[2] == "__jail" {
        let error = match ignite_sandbox::jail::JailSpec::from_args(&args[3..]) {
            Ok(spec) => ignite_sandbox::jail::exec(&spec),
            Err(e) => e,
        };
        eprintln!("ignite build jail: {error}");
        std::process::exit(126);
    }
    let words: Vec<String> = args[1..]
        .iter()
        .filter_map(|a| a.to_str())
        .map(str::to_string)
        .collect();
    if words.iter().any(|w| w == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let filter = words.iter().find(|w| !w.starts_with('-'));
    let chosen: Vec<&Test> = tests
        .iter()
        .filter(|(name, _)| filter.is_none_or(|f| name.contains(f.as_str())))
        .collect();
    if !prerequisite(chosen.len()) {
        return;
    }
    if !is_root() {
        println!("skipping {} {what}: they need root", chosen.len());
        return;
    }
    setup();
    let mut failed = Vec::new();
    for (name, test) in &chosen {
        println!("test {name} ...");
        let start = Instant::now();
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok ({:.1?})", start.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "\n{} passed; {} failed",
        chosen.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
