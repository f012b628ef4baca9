//! One process per SQLite file: `serve` holds an exclusive lock on `<file>.lock` for its
//! whole life (the kernel drops it when the process ends, however it ends), and writes
//! its pid there so a second process can say who holds the file.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock on an embedded store; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of a database file.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Take the lock of the store at `db`, or say which process holds it.
pub fn acquire(db: &Path) -> Result<StoreLock, String> {
    let path = lock_path(db);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another ameyo-scim process ({holder})")
            };
            return Err(format!(
                "the embedded store {} is in use by {who}: one process per SQLite file. \
                 Stop that process first, or move to PostgreSQL (ameyo-scim migrate-store) \
                 to run several replicas",
                db.display()
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(format!("cannot lock {}: {e}", path.display()));
        }
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let me = format!("pid {} on {host}", std::process::id());
    // Best effort: the lock itself is what excludes; the text only names the holder.
    let _ = file
        .set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(me.as_bytes()))
        .and_then(|_| file.flush());
    Ok(StoreLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_until_it_lets_go() {
        let dir = std::env::temp_dir().join(format!("ameyo-scim-lock-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("store.db");
        let first = acquire(&db).unwrap();
        assert_eq!(first.path(), dir.join("store.db.lock"));
        let e = acquire(&db).unwrap_err();
        assert!(e.contains(&db.display().to_string()), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        acquire(&db).expect("free again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
