//! Where ACME state lives on disk, under `[acme] storage`: the ACME process
//! writes it, the master reads the certificates from it at start, reload and
//! renewal. Only the master's user can read it (the directory is 0700, every
//! file 0600): workers that run as another user hold the keys they serve in
//! memory, inherited from the master, and nothing else.
//!
//! ```text
//! STORAGE/lock                          flock: one ACME process at a time
//! STORAGE/accounts/HASH.json            account key and URL, per directory
//! STORAGE/certificates/NAME/certificate.pem
//!                                       its private key (PKCS#8), then the
//!                                       chain, leaf first (NAME: the first name)
//! ```
//!
//! Key and chain share one file so that replacing them is one rename: a
//! crash never leaves a new key beside an old chain.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file of the certificate whose first name is `names[0]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCertificate {
    pub path: PathBuf,
}

impl StoredCertificate {
    pub fn for_names(storage: &Path, names: &[String]) -> Self {
        let dir = storage.join("certificates").join(names.first().map_or("_", String::as_str));
        StoredCertificate { path: dir.join("certificate.pem") }
    }

    /// True when the file is there (whether it is usable is the loader's
    /// to say).
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Replaces key and chain at once: the new file is complete on disk
    /// before it is renamed over the old one.
    pub fn write(&self, chain_pem: &[u8], key_pem: &[u8]) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir)?;
        }
        let mut both = key_pem.to_vec();
        if !both.ends_with(b"\n") {
            both.push(b'\n');
        }
        both.extend_from_slice(chain_pem);
        write_private(&self.path, &both)
    }
}

/// The account file for one ACME directory: each directory (production,
/// staging, a private CA) has an account of its own.
pub fn account_file(storage: &Path, directory: &str) -> PathBuf {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
    let hex: String = digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect();
    storage.join("accounts").join(format!("{hex}.json"))
}

/// The lock file one ACME process holds at a time (two masters during a
/// binary upgrade share the storage).
pub fn lock_file(storage: &Path) -> PathBuf {
    storage.join("lock")
}

/// Creates `dir` (and its parents) with mode 0700; an existing directory
/// keeps its mode.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// True when users other than the owner can read or enter `dir`.
pub fn opened_to_others(dir: &Path) -> bool {
    fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// What `tine check` (and the master, at start) says of an `[acme]` table:
/// storage others can read, and a challenge a public CA could not reach
/// (it validates http-01 on port 80 and tls-alpn-01 on port 443).
pub fn warnings(acme: &tine_config::Acme, config: &tine_config::Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if opened_to_others(&acme.storage) {
        warnings.push(format!(
            "{}: the ACME storage (account and certificate keys) can be read by other users; chmod 700 it",
            acme.storage.display()
        ));
    }
    let (port, addrs, key) = match acme.challenge {
        tine_config::AcmeChallenge::Http01 => (80, &config.listen, "listen"),
        tine_config::AcmeChallenge::TlsAlpn01 => (443, &config.tls_listen, "tls_listen"),
    };
    if !addrs.iter().any(|a| a.port() == port) {
        warnings.push(format!(
            "acme: a public CA validates {} on port {port}, and no {key} address has that port \
             (fine behind a port forward, or with a private CA)",
            acme.challenge.name()
        ));
    }
    warnings
}

/// Writes `bytes` to `path` with mode 0600: to a temporary file beside it,
/// synced, then renamed over it.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("acme");
        let stored =
            StoredCertificate::for_names(&storage, &["example.com".into(), "www.example.com".into()]);
        assert!(!stored.exists());
        stored.write(b"chain one\n", b"key one\n").unwrap();
        stored.write(b"chain two\n", b"key two").unwrap();
        assert!(stored.exists());
        assert_eq!(fs::read(&stored.path).unwrap(), b"key two\nchain two\n");
        assert_eq!(fs::metadata(&stored.path).unwrap().permissions().mode() & 0o777, 0o600);
        let dir_mode = fs::metadata(stored.path.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert!(!opened_to_others(&storage));
    }

    #[test]
    fn each_directory_has_its_account() {
        let a = account_file(Path::new("/s"), "https://a.example/dir");
        let b = account_file(Path::new("/s"), "https://b.example/dir");
        assert_ne!(a, b);
        assert!(a.starts_with("/s/accounts"));
    }
}
