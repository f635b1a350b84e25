//! Unpacked roots, one per manifest digest, under one directory and within a byte budget: the
//! least recently used roots nobody leases are removed when the cache is over it, and
//! concurrent acquires of one digest unpack it once.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ignite_builder::oci::OciLayout;

use crate::manifest::check_digest;
use crate::unpack::{UnpackLimits, unpack};
use crate::{Image, ImageError, Root, root};

/// Unpacked roots per manifest digest under `dir`, within `budget_bytes` of file content;
/// least recently used ones (not leased) removed when over budget. Concurrent unpacks of one
/// digest unpack once. Roots left by an earlier process are removed when the cache is made
/// (it starts cold, so that what is on disk is what it counts).
#[derive(Clone)]
pub struct RootCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    budget: u64,
    limits: UnpackLimits,
    state: Mutex<State>,
    unpacked: Condvar,
}

#[derive(Default)]
struct State {
    roots: HashMap<String, Entry>,
    unpacking: HashSet<String>,
    clock: u64,
    total: u64,
}

struct Entry {
    root: Arc<Root>,
    size: u64,
    leases: usize,
    last_used: u64,
}

impl std::fmt::Debug for RootCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCache")
            .field("dir", &self.inner.dir)
            .field("budget", &self.inner.budget)
            .finish_non_exhaustive()
    }
}

impl RootCache {
    /// A cache in `dir` of at most `budget_bytes`; one image may unpack to at most the budget.
    pub fn new(dir: PathBuf, budget_bytes: u64) -> RootCache {
        let limits = UnpackLimits {
            max_bytes: budget_bytes,
            ..UnpackLimits::default()
        };
        RootCache::with_limits(dir, budget_bytes, limits)
    }

    /// As [`RootCache::new`], with explicit caps on one image's unpack.
    pub fn with_limits(dir: PathBuf, budget_bytes: u64, limits: UnpackLimits) -> RootCache {
        clear(&dir);
        RootCache {
            inner: Arc::new(Inner {
                dir,
                budget: budget_bytes,
                limits,
                state: Mutex::new(State::default()),
                unpacked: Condvar::new(),
            }),
        }
    }

    /// The root of `image`, unpacking it (blocking; callers use `spawn_blocking`) if it is not
    /// cached; the lease keeps it from eviction until dropped. Tells whether it was unpacked
    /// now.
    pub fn acquire(
        &self,
        layout: &OciLayout,
        image: &Image,
    ) -> Result<(RootLease, bool), ImageError> {
        check_digest(&image.manifest_digest, "manifest")?;
        let hex = image
            .manifest_digest
            .trim_start_matches("sha256:")
            .to_string();
        {
            let mut state = self.inner.lock();
            loop {
                if let Some(lease) = self.inner.lease(&mut state, &hex) {
                    return Ok((lease, false));
                }
                if !state.unpacking.contains(&hex) {
                    break;
                }
                state = self
                    .inner
                    .unpacked
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            state.unpacking.insert(hex.clone());
        }
        let made = self.inner.unpack_root(layout, image, &hex);
        let mut state = self.inner.lock();
        state.unpacking.remove(&hex);
        self.inner.unpacked.notify_all();
        let (root, size) = made?;
        state.total += size;
        state.clock += 1;
        let root = Arc::new(root);
        let last_used = state.clock;
        state.roots.insert(
            hex.clone(),
            Entry {
                root: root.clone(),
                size,
                leases: 1,
                last_used,
            },
        );
        let evicted = self.inner.evict(&mut state);
        drop(state);
        remove_all(evicted);
        Ok((
            RootLease {
                cache: self.inner.clone(),
                hex,
                root,
            },
            true,
        ))
    }

    /// Bytes of file content in the cached roots.
    pub fn usage(&self) -> u64 {
        self.inner.lock().total
    }

    /// The manifest digests whose roots are cached.
    pub fn cached(&self) -> Vec<String> {
        let state = self.inner.lock();
        let mut digests: Vec<String> = state.roots.keys().map(|h| format!("sha256:{h}")).collect();
        digests.sort();
        digests
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease(self: &Arc<Self>, state: &mut State, hex: &str) -> Option<RootLease> {
        state.clock += 1;
        let clock = state.clock;
        let entry = state.roots.get_mut(hex)?;
        entry.leases += 1;
        entry.last_used = clock;
        Some(RootLease {
            cache: self.clone(),
            hex: hex.to_string(),
            root: entry.root.clone(),
        })
    }

    /// Unpacks into `<dir>/<hex>.partial-<ulid>`, reads the settings, renames to `<dir>/<hex>`.
    fn unpack_root(
        &self,
        layout: &OciLayout,
        image: &Image,
        hex: &str,
    ) -> Result<(Root, u64), ImageError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| ImageError::io("could not create the root cache", &self.dir, e))?;
        let partial = self
            .dir
            .join(format!("{hex}.partial-{}", ulid::Ulid::new()));
        let path = self.dir.join(hex);
        let made = (|| {
            let report = unpack(layout, image, &partial, &self.limits)?;
            let root = root::settings(&partial, path.clone(), &image.config)?;
            if path.exists() {
                remove_tree(&path);
            }
            std::fs::rename(&partial, &path)
                .map_err(|e| ImageError::io("could not move the unpacked root to", &path, e))?;
            tracing::info!(
                image = %image.manifest_digest,
                bytes = report.bytes,
                entries = report.entries,
                refused = report.refused(),
                "unpacked the image's root"
            );
            Ok((root, report.bytes))
        })();
        if made.is_err() {
            remove_tree(&partial);
        }
        made
    }

    /// Takes the least recently used unleased roots out while over budget; returns their
    /// directories, renamed aside, for removal outside the lock.
    fn evict(&self, state: &mut State) -> Vec<PathBuf> {
        let mut out = Vec::new();
        while state.total > self.budget {
            let victim = state
                .roots
                .iter()
                .filter(|(_, e)| e.leases == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(h, _)| h.clone());
            let Some(hex) = victim else {
                tracing::warn!(
                    total = state.total,
                    budget = self.budget,
                    "the image root cache is over budget and every root is in use"
                );
                break;
            };
            let Some(entry) = state.roots.remove(&hex) else {
                break;
            };
            state.total -= entry.size;
            let path = self.dir.join(&hex);
            let aside = self
                .dir
                .join(format!("{hex}.evicted-{}", ulid::Ulid::new()));
            match std::fs::rename(&path, &aside) {
                Ok(()) => out.push(aside),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not evict an image root");
                }
            }
        }
        out
    }
}

/// A root in use: it is not evicted until the lease is dropped.
pub struct RootLease {
    cache: Arc<Inner>,
    hex: String,
    root: Arc<Root>,
}

impl RootLease {
    pub fn root(&self) -> &Root {
        &self.root
    }
}

impl std::fmt::Debug for RootLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RootLease").field(&self.root.path).finish()
    }
}

impl Deref for RootLease {
    type Target = Root;
    fn deref(&self) -> &Root {
        &self.root
    }
}

impl Drop for RootLease {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        state.clock += 1;
        let clock = state.clock;
        if let Some(entry) = state.roots.get_mut(&self.hex) {
            entry.leases = entry.leases.saturating_sub(1);
            entry.last_used = clock;
        }
        let evicted = self.cache.evict(&mut state);
        drop(state);
        remove_all(evicted);
    }
}

/// Deletes evicted roots (already renamed aside by `evict`) on a thread of its own: a lease is
/// often dropped on an async runtime's worker, and a root may be gigabytes.
fn remove_all(aside: Vec<PathBuf>) {
    if aside.is_empty() {
        return;
    }
    let removing = std::thread::Builder::new()
        .name("ignite-root-eviction".into())
        .spawn({
            let aside = aside.clone();
            move || aside.iter().for_each(|d| remove_tree(d))
        });
    if removing.is_err() {
        aside.iter().for_each(|d| remove_tree(d));
    }
}

fn remove_tree(path: &Path) {
    // std's remove_dir_all never follows a symlink it meets.
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove an image root");
    }
}

/// Removes what an earlier process left in `dir`.
fn clear(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => remove_tree(&path),
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
}
