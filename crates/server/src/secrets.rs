//! Secrets the server must be able to read back (a registry password it logs in with), sealed
//! at rest with ChaCha20-Poly1305 under a key of the server's own (`<data-dir>/secret.key`,
//! 0600, made at first start). Each sealed value is bound to what it belongs to (its org and
//! host, as associated data): a value copied to another row does not open. Tokens, which the
//! server only compares, are hashed instead (`auth.rs`).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const NONCE: usize = 12;

pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    /// The server's key at `<data_dir>/secret.key`, made now if there is none.
    pub fn open(data_dir: &Path) -> io::Result<SecretBox> {
        let path = data_dir.join("secret.key");
        let key = match std::fs::read(&path) {
            Ok(key) if key.len() == 32 => key,
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a 32-byte key; restore it from a backup (the registry \
                     credentials it sealed cannot be read without it) or remove it and log in \
                     to each registry again",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key).map_err(io::Error::other)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                file.write_all(&key)?;
                file.sync_all()?;
                key
            }
            Err(e) => return Err(e),
        };
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// `plaintext` sealed for `context`: a random nonce, then the ciphertext and its tag.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> io::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(io::Error::other)?;
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .map_err(|_| io::Error::other("sealing a secret failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// What [`SecretBox::seal`] sealed for `context`; `None` if it was sealed for something
    /// else, under another key, or altered.
    pub fn open_sealed(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_context_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretBox::open(dir.path()).unwrap();
        let sealed = secrets.seal(b"hunter2", b"acme\0registry.example").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            secrets
                .open_sealed(&sealed, b"acme\0registry.example")
                .as_deref(),
            Some(&b"hunter2"[..])
        );
        assert_eq!(
            secrets.open_sealed(&sealed, b"other\0registry.example"),
            None
        );
        // The same key is read back on the next start.
        let again = SecretBox::open(dir.path()).unwrap();
        assert!(
            again
                .open_sealed(&sealed, b"acme\0registry.example")
                .is_some()
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let other = SecretBox::open(elsewhere.path()).unwrap();
        assert_eq!(other.open_sealed(&sealed, b"acme\0registry.example"), None);
    }
}
