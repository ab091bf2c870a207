//! A local file replaced whole: written under a hidden temporary name in the target's folder,
//! then renamed over the target once complete. Readers see the old bytes or the new ones, never
//! part of either, and a run that fails (or is cancelled) deletes the temporary file and leaves
//! the target as it was. The CLI's `--output` writes this way; exports do too, and flush the
//! file to disk before the rename (engine/export/sink.rs).
//!
//! - The new file gets the old one's permissions, or a new file's (`0666` less the umask on
//!   Unix), not the owner-only mode temporary files are created with.
//! - A target that is a symbolic link is resolved: the file it points to is replaced and the link
//!   stays.
//! - A target that exists and is not a regular file (`/dev/stdout`, a named pipe, a device)
//!   is never replaced: [`Replacement::create`] refuses it (renamed over, a device would become
//!   a file), and [`Replacement::needed`] tells a caller to write to it in place instead.
//!
//! A process that dies leaves its temporary file behind (hidden, never read; delete it at leisure).

use std::fs::Permissions;
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file on its way to replacing `target`.
pub struct Replacement {
    temp: NamedTempFile,
    target: PathBuf,
}

impl Replacement {
    /// Whether `target` is replaced through a temporary file: `false` where it exists and is
    /// not a regular file (after following links), which is then written to in place.
    pub fn needed(target: &Path) -> bool {
        std::fs::metadata(target).map_or(true, |m| m.is_file())
    }

    /// Starts a replacement of `target`: an empty temporary file whose name starts with
    /// `prefix` (hidden: start it with a dot) in the folder of the file `target` is or points
    /// to. The folder must exist. A target that exists and is not a regular file is refused
    /// with [`std::io::ErrorKind::InvalidInput`].
    pub fn create(target: &Path, prefix: &str) -> std::io::Result<Self> {
        let is_link = std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink());
        // A link that points nowhere yet is written through as a new file would be: its target
        // is created in place of the link's destination.
        let target = match is_link {
            true => std::fs::canonicalize(target).or_else(|_| resolve_dangling(target))?,
            false => target.to_path_buf(),
        };
        if !Self::needed(&target) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "exists and is not a regular file, so it is not replaced",
            ));
        }
        let folder = match target.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(folder) => folder.to_path_buf(),
            None => PathBuf::from("."),
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(prefix);
        if let Some(permissions) = permissions_for(&target) {
            builder.permissions(permissions);
        }
        let temp = builder.tempfile_in(&folder)?;
        Ok(Self { temp, target })
    }

    /// The file the bytes go to.
    pub fn file(&self) -> &std::fs::File {
        self.temp.as_file()
    }

    /// The file this replaces (a link resolved).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the written file in the target's place, in one rename.
    pub fn persist(self) -> std::io::Result<()> {
        self.temp
            .persist(&self.target)
            .map(drop)
            .map_err(|e| e.error)
    }
}

impl Write for Replacement {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.temp.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// The path a link that points nowhere names, relative to the link's folder where it is
/// relative.
fn resolve_dangling(link: &Path) -> std::io::Result<PathBuf> {
    let to = std::fs::read_link(link)?;
    Ok(match link.parent() {
        Some(folder) if to.is_relative() => folder.join(to),
        _ => to,
    })
}

/// The permissions the new file gets: the old file's, or, for a new one, what creating it
/// would give (`0666` less the umask, which the kernel applies).
fn permissions_for(target: &Path) -> Option<Permissions> {
    if let Ok(meta) = std::fs::metadata(target) {
        return Some(meta.permissions());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(Permissions::from_mode(0o666))
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_all(mut r: Replacement, bytes: &[u8]) -> std::io::Result<()> {
        r.write_all(bytes)?;
        r.persist()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_target_changes_only_when_the_replacement_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.csv");
        std::fs::write(&target, "old").unwrap();
        let mut r = Replacement::create(&target, ".pitlake-test-").unwrap();
        r.write_all(b"new, half written").unwrap();
        r.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(
            entries(dir.path()).len(),
            2,
            "the temporary file sits beside the target"
        );
        drop(r);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(
            entries(dir.path()),
            ["out.csv"],
            "a dropped replacement leaves nothing"
        );

        write_all(
            Replacement::create(&target, ".pitlake-test-").unwrap(),
            b"new",
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(entries(dir.path()), ["out.csv"]);
    }

    #[test]
    fn a_new_file_is_created_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("new.parquet");
        write_all(Replacement::create(&target, ".x-").unwrap(), b"bytes").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"bytes");
        let missing = dir.path().join("no/such/folder/f.csv");
        assert!(Replacement::create(&missing, ".x-").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_kept_and_a_new_file_is_not_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.csv");
        std::fs::write(&old, "old").unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o640)).unwrap();
        write_all(Replacement::create(&old, ".x-").unwrap(), b"new").unwrap();
        let mode = std::fs::metadata(&old).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);

        let new = dir.path().join("new.csv");
        write_all(Replacement::create(&new, ".x-").unwrap(), b"new").unwrap();
        let mode = std::fs::metadata(&new).unwrap().permissions().mode() & 0o777;
        // 0666 less the umask: whatever the umask, group or others may read unless it says not.
        let umask = {
            let probe = dir.path().join("probe");
            std::fs::File::create(&probe).unwrap();
            0o666 & !std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o666 & !umask);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.csv");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink("real.csv", &link).unwrap();
        write_all(Replacement::create(&link, ".x-").unwrap(), b"new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");

        let dangling = dir.path().join("dangling.csv");
        std::os::unix::fs::symlink("later.csv", &dangling).unwrap();
        write_all(Replacement::create(&dangling, ".x-").unwrap(), b"made").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("later.csv")).unwrap(),
            "made"
        );
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(Replacement::needed(&dir.path().join("absent.csv")));
        let file = dir.path().join("f.csv");
        std::fs::write(&file, "x").unwrap();
        assert!(Replacement::needed(&file));
        assert!(!Replacement::needed(Path::new("/dev/null")));
        assert!(!Replacement::needed(dir.path()));
        for special in [Path::new("/dev/null"), dir.path()] {
            let err = Replacement::create(special, ".x-").err().expect("refused");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{special:?}");
        }
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        assert_eq!(entries(dir.path()), ["f.csv"]);
    }
}
