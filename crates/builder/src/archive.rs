//! Unpacking a user's uploaded source, which is hostile until proven otherwise.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "the archive entry {0:?} has an absolute path; archive the project directory with relative paths"
    )]
    Absolute(PathBuf),
    #[error("the archive entry {0:?} climbs out of the project with `..`; remove it")]
    ParentDir(PathBuf),
    #[error("the archive entry {0:?} is a link; links are not accepted in uploaded source")]
    Link(PathBuf),
    #[error("the archive unpacks to more than {0} bytes; trim the upload (leave out target/)")]
    TooLarge(u64),
    #[error("the upload is not a readable .tar.gz or .zip archive: {0}")]
    Corrupt(std::io::Error),
    #[error("I/O error writing the unpacked source: {0}")]
    Io(std::io::Error),
}

fn check_path(path: &Path) -> Result<(), ArchiveError> {
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => {
                return Err(ArchiveError::Absolute(path.to_owned()));
            }
            Component::ParentDir => return Err(ArchiveError::ParentDir(path.to_owned())),
            _ => {}
        }
    }
    Ok(())
}

/// Unpacks a `.tar.gz` or `.zip` upload (told apart by their first bytes) with the checks of
/// [`unpack_tar_gz`].
pub fn unpack(bytes: &[u8], dest: &Path, cap: u64) -> Result<(), ArchiveError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        unpack_zip(bytes, dest, cap)
    } else {
        unpack_tar_gz(bytes, dest, cap)
    }
}

/// Unpacks a `.zip` archive with the same refusals as [`unpack_tar_gz`]. Sizes are counted as
/// the entries are inflated, not taken from the (forgeable) central directory.
pub fn unpack_zip(bytes: &[u8], dest: &Path, cap: u64) -> Result<(), ArchiveError> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::Corrupt(std::io::Error::other(e));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(corrupt)?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(corrupt)?;
        let path = PathBuf::from(entry.name().map_err(corrupt)?.as_ref());
        check_path(&path)?;
        if entry.is_symlink() {
            return Err(ArchiveError::Link(path));
        }
        let out = dest.join(&path);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(ArchiveError::Io)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(ArchiveError::Io)?;
        }
        let mut file = std::fs::File::create(&out).map_err(ArchiveError::Io)?;
        let room = cap.saturating_sub(total);
        let copied =
            std::io::copy(&mut (&mut entry).take(room + 1), &mut file).map_err(ArchiveError::Io)?;
        total += copied;
        if total > cap {
            return Err(ArchiveError::TooLarge(cap));
        }
        keep_executable(&file, entry.unix_mode().unwrap_or(0))?;
    }
    Ok(())
}

/// An executable file stays executable (a build context's program, a script); no other mode
/// bit of the upload is kept (no setuid, nothing writable by others).
fn keep_executable(file: &std::fs::File, mode: u32) -> Result<(), ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    if mode & 0o100 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(ArchiveError::Io)?;
    }
    Ok(())
}

/// Unpacks a gzip-compressed tar archive into `dest` (which must exist and be empty), refusing
/// absolute paths, `..`, links of any kind, device files, and more than `cap` bytes unpacked.
pub fn unpack_tar_gz(bytes: &[u8], dest: &Path, cap: u64) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut total = 0u64;
    for entry in archive.entries().map_err(ArchiveError::Corrupt)? {
        let mut entry = entry.map_err(ArchiveError::Corrupt)?;
        let path = entry.path().map_err(ArchiveError::Corrupt)?.into_owned();
        check_path(&path)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(ArchiveError::Link(path));
        }
        let out = dest.join(&path);
        if kind.is_dir() {
            std::fs::create_dir_all(&out).map_err(ArchiveError::Io)?;
            continue;
        }
        if !kind.is_file() {
            // Devices, fifos and the like have no place in source; skip them.
            continue;
        }
        total = total.saturating_add(entry.size());
        if total > cap {
            return Err(ArchiveError::TooLarge(cap));
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(ArchiveError::Io)?;
        }
        // Copy at most what the header announced, and count what really came.
        let mut file = std::fs::File::create(&out).map_err(ArchiveError::Io)?;
        let copied =
            std::io::copy(&mut (&mut entry).take(cap + 1), &mut file).map_err(ArchiveError::Io)?;
        if copied > entry.size() || total > cap {
            return Err(ArchiveError::TooLarge(cap));
        }
        keep_executable(&file, entry.header().mode().unwrap_or(0))?;
    }
    Ok(())
}
