//! Secrets at rest (passwords waiting for delivery, the shared Ameyo session),
//! encrypted with AES-256-GCM. The owner's id is bound in as associated data, so a
//! ciphertext moved to another row does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct PasswordCipher {
    cipher: Aes256Gcm,
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
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// `nonce || ciphertext`.
    pub fn seal(&self, owner: &[u8], password: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: password.expose_secret().as_bytes(),
                    aad: owner,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, owner: &[u8], sealed: &[u8]) -> Result<SecretString, DecryptError> {
        if sealed.len() <= NONCE_LEN {
            return Err(DecryptError);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| DecryptError)?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: owner,
                },
            )
            .map_err(|_| DecryptError)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| DecryptError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn round_trip_and_binding() {
        let c = PasswordCipher::new(&[7u8; 32]);
        let id = Uuid::new_v4();
        let id = id.as_bytes();
        let sealed = c.seal(id, &SecretString::from("hunter2"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(c.open(id, &sealed).unwrap().expose_secret(), "hunter2");
        assert!(
            c.open(Uuid::new_v4().as_bytes(), &sealed).is_err(),
            "bound to its user"
        );
        assert!(PasswordCipher::new(&[8u8; 32]).open(id, &sealed).is_err());
        assert_ne!(
            sealed,
            c.seal(id, &SecretString::from("hunter2")),
            "fresh nonce"
        );
    }
}
