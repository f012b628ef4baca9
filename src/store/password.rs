//! Secrets at rest (passwords waiting for delivery, the shared Ameyo session),
//! encrypted with AES-256-GCM. The owner's id is bound in as associated data, so a
//! ciphertext moved to another row does not decrypt.
//!
//! Keys rotate: a sealed value names the key that sealed it, and a cipher holds the
//! current key (which seals) and any previous ones (which only open), so values sealed
//! before `sync.password_key` changed still open after it.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, Settings};

const NONCE_LEN: usize = 12;
/// Starts every value sealed in the current format: "ameyo-scim sealed, version 1".
const MAGIC: &[u8; 4] = b"asc\x01";
const KEY_ID_LEN: usize = 4;
/// `MAGIC || key id || nonce`, then the ciphertext with its tag.
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;

type KeyId = [u8; KEY_ID_LEN];

#[derive(Clone)]
struct Key {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            id: key_id(key),
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    fn open(&self, owner: &[u8], nonce: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: owner,
                },
            )
            .ok()
    }
}

/// Names a key without revealing it: a truncated hash, domain-separated so that it
/// matches no other use of the key.
fn key_id(key: &[u8; 32]) -> KeyId {
    let digest = Sha256::new()
        .chain_update(b"ameyo-scim password key id\0")
        .chain_update(key)
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

#[derive(Clone)]
pub struct PasswordCipher {
    /// Seals, and opens first.
    current: Key,
    /// Open only, in the order configured.
    previous: Vec<Key>,
}

impl std::fmt::Debug for PasswordCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordCipher(REDACTED)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a stored password could not be decrypted (wrong sync.password_key?)")]
pub struct DecryptError;

impl PasswordCipher {
    /// One key, which seals and opens.
    pub fn new(key: &[u8; 32]) -> Self {
        Self::with_previous(key, &[])
    }

    /// `current` seals and opens; `previous` keys only open what they sealed before a
    /// rotation. A key given twice is kept once.
    pub fn with_previous(current: &[u8; 32], previous: &[[u8; 32]]) -> Self {
        let current = Key::new(current);
        let mut kept: Vec<Key> = Vec::with_capacity(previous.len());
        for k in previous {
            let k = Key::new(k);
            if k.id != current.id && kept.iter().all(|p| p.id != k.id) {
                kept.push(k);
            }
        }
        Self {
            current,
            previous: kept,
        }
    }

    /// The cipher of `sync.password_key` and `sync.previous_password_keys`.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let (current, previous) = settings.password_keys()?;
        Ok(Self::with_previous(&current, &previous))
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// `MAGIC || key id || nonce || ciphertext`, under the current key.
    pub fn seal(&self, owner: &[u8], password: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: password.expose_secret().as_bytes(),
                    aad: owner,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, owner: &[u8], sealed: &[u8]) -> Result<SecretString, DecryptError> {
        let plain = self
            .open_tagged(owner, sealed)
            .or_else(|| self.open_legacy(owner, sealed))
            .ok_or(DecryptError)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| DecryptError)
    }

    /// The current format: only the key(s) with the named id are tried.
    fn open_tagged(&self, owner: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(MAGIC.as_slice())?;
        if rest.len() <= KEY_ID_LEN + NONCE_LEN {
            return None;
        }
        let (id, rest) = rest.split_at(KEY_ID_LEN);
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        self.keys()
            .filter(|k| k.id == id)
            .find_map(|k| k.open(owner, nonce, ct))
    }

    /// Values sealed before key ids existed: `nonce || ciphertext`, under any key. A
    /// tagged value that failed above lands here too, so that a legacy value whose
    /// random nonce happens to begin with `MAGIC` still opens; the tag makes a false
    /// success impossible in practice.
    fn open_legacy(&self, owner: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.keys().find_map(|k| k.open(owner, nonce, ct))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const K1: [u8; 32] = [7u8; 32];
    const K2: [u8; 32] = [9u8; 32];

    /// A value as sealed before key ids: `nonce || ciphertext`.
    fn legacy_seal(key: &[u8; 32], owner: &[u8], secret: &str) -> Vec<u8> {
        let nonce = [3u8; NONCE_LEN];
        let ct = Aes256Gcm::new(key.into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: owner,
                },
            )
            .unwrap();
        [nonce.as_slice(), &ct].concat()
    }

    #[test]
    fn round_trip_and_binding() {
        let c = PasswordCipher::new(&K1);
        let id = Uuid::new_v4();
        let id = id.as_bytes();
        let sealed = c.seal(id, &SecretString::from("hunter2"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert!(sealed.starts_with(MAGIC));
        assert_eq!(&sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN], &key_id(&K1));
        assert_eq!(c.open(id, &sealed).unwrap().expose_secret(), "hunter2");
        assert!(
            c.open(Uuid::new_v4().as_bytes(), &sealed).is_err(),
            "bound to its user"
        );
        assert_ne!(
            sealed,
            c.seal(id, &SecretString::from("hunter2")),
            "fresh nonce"
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_with_the_new_key() {
        let owner = b"user-1";
        let old = PasswordCipher::new(&K1).seal(owner, &SecretString::from("before"));
        let rotated = PasswordCipher::with_previous(&K2, &[K1]);
        assert_eq!(rotated.open(owner, &old).unwrap().expose_secret(), "before");
        let new = rotated.seal(owner, &SecretString::from("after"));
        assert_eq!(&new[MAGIC.len()..MAGIC.len() + KEY_ID_LEN], &key_id(&K2));
        assert_eq!(
            PasswordCipher::new(&K2)
                .open(owner, &new)
                .unwrap()
                .expose_secret(),
            "after"
        );
        assert!(PasswordCipher::new(&K1).open(owner, &new).is_err());
        // Without the previous key, the old value is lost.
        assert!(PasswordCipher::new(&K2).open(owner, &old).is_err());
    }

    #[test]
    fn legacy_values_open_under_any_configured_key() {
        let owner = b"user-2";
        let blob = legacy_seal(&K1, owner, "legacy");
        assert_eq!(
            PasswordCipher::new(&K1)
                .open(owner, &blob)
                .unwrap()
                .expose_secret(),
            "legacy"
        );
        assert_eq!(
            PasswordCipher::with_previous(&K2, &[K1])
                .open(owner, &blob)
                .unwrap()
                .expose_secret(),
            "legacy"
        );
        assert!(PasswordCipher::new(&K2).open(owner, &blob).is_err());
        assert!(PasswordCipher::new(&K1).open(b"other", &blob).is_err());
    }

    #[test]
    fn wrong_keys_and_bad_ids_fail_cleanly() {
        let owner = b"user-3";
        let sealed = PasswordCipher::new(&K1).seal(owner, &SecretString::from("x"));
        assert!(PasswordCipher::new(&K2).open(owner, &sealed).is_err());
        assert!(
            PasswordCipher::with_previous(&K2, &[[1u8; 32]])
                .open(owner, &sealed)
                .is_err()
        );
        // The id names K2, the ciphertext is K1's: K2 cannot open it, nor can any key
        // read it as a legacy value, and nothing panics.
        let mut renamed = sealed.clone();
        renamed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN].copy_from_slice(&key_id(&K2));
        assert!(
            PasswordCipher::with_previous(&K2, &[K1])
                .open(owner, &renamed)
                .is_err()
        );
        // An id no configured key has.
        let mut unknown = sealed.clone();
        unknown[MAGIC.len()..MAGIC.len() + KEY_ID_LEN].copy_from_slice(&[0, 1, 2, 3]);
        assert!(PasswordCipher::new(&K1).open(owner, &unknown).is_err());
        // Truncated values of every length.
        let c = PasswordCipher::new(&K1);
        for n in 0..sealed.len() {
            assert!(c.open(owner, &sealed[..n]).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn a_key_given_twice_is_kept_once() {
        let c = PasswordCipher::with_previous(&K1, &[K2, K1, K2]);
        assert_eq!(c.previous.len(), 1);
        assert_eq!(c.previous[0].id, key_id(&K2));
    }
}
