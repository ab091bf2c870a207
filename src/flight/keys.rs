//! The secrets the server signs with: session tokens and tickets.
//!
//! Without configured secrets, each process draws a fresh random one at start: its tokens and
//! tickets are good on that process only, and only until it stops. Replicas behind one load
//! balancer are given the same secret (`--signing-key-file`, or `PITLAKE_SIGNING_KEY`): then a
//! token from one is accepted by all, and a ticket from one is redeemed by any. Rotation: the
//! new secret signs, and old ones listed after it are still accepted until removed.
//!
//! A secret is at least [`MIN_SECRET_BYTES`] random bytes, written in base64. It is never
//! logged or shown: `Debug` prints how many there are, not what they are. Tokens and tickets
//! are signed with keys derived from it for each purpose, so one can never pass for the other.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{PitlakeError, Result};

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The signing secrets: the one that signs, then those still accepted.
#[derive(Clone)]
pub struct SigningSecrets {
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SigningSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningSecrets {{ {} secret(s), redacted }}",
            self.secrets.len()
        )
    }
}

impl SigningSecrets {
    /// A fresh random secret, for one process on its own.
    pub fn random() -> Result<Self> {
        let mut secret = vec![0u8; MIN_SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| PitlakeError::Internal("the system's random source failed".into()))?;
        Ok(Self {
            secrets: vec![secret],
        })
    }

    /// Secrets written in base64: `current` signs, `previous` are still accepted. `origin`
    /// names where they came from, for errors (never the value).
    pub fn parse(current: &str, previous: &[&str], origin: &str) -> Result<Self> {
        let secrets = std::iter::once(current)
            .chain(previous.iter().copied())
            .enumerate()
            .map(|(n, text)| decode(text, origin, n))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { secrets })
    }

    /// A key file: one base64 secret per line, the first signs and the others are still
    /// accepted; empty lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PitlakeError::Config {
            name: "--signing-key-file".into(),
            message: format!("cannot read {origin}: {e}"),
        })?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let Some((current, previous)) = lines.split_first() else {
            return Err(PitlakeError::Config {
                name: "--signing-key-file".into(),
                message: format!(
                    "{origin} holds no secret; write one line of base64, e.g. the output of \
                     `openssl rand -base64 32`"
                ),
            });
        };
        Self::parse(current, previous, &origin)
    }

    /// How many secrets there are (the signing one and those still accepted).
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether there are none (never, once built).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The keys for one purpose (`token`, `ticket`).
    pub(crate) fn keyring(&self, purpose: &str) -> Keyring {
        let derive = |secret: &Vec<u8>| {
            let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
            let derived = hmac::sign(&root, format!("pitlake/v1/{purpose}").as_bytes());
            hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
        };
        Keyring {
            keys: self.secrets.iter().map(derive).collect(),
        }
    }
}

fn decode(text: &str, origin: &str, n: usize) -> Result<Vec<u8>> {
    let which = if n == 0 {
        "the signing secret".to_string()
    } else {
        format!("previous secret {n}")
    };
    let bad = |message: String| PitlakeError::Config {
        name: "signing key".into(),
        message: format!("{which} in {origin}: {message}"),
    };
    let text = text.trim();
    let bytes =
        STANDARD
            .decode(text)
            .or_else(|_| STANDARD_NO_PAD.decode(text))
            .map_err(|_| {
                bad("is not base64; write random bytes in base64, e.g. the output of `openssl rand \
                 -base64 32`"
                .into())
            })?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(bad(format!(
            "is {} bytes; a signing secret is at least {MIN_SECRET_BYTES} random bytes \
             (`openssl rand -base64 32`)",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The keys of one purpose: the first signs, every one verifies.
pub(crate) struct Keyring {
    keys: Vec<hmac::Key>,
}

impl Keyring {
    /// The tag of `message` under the signing key.
    pub(crate) fn sign(&self, message: &[u8]) -> hmac::Tag {
        hmac::sign(&self.keys[0], message)
    }

    /// Whether `tag` is `message`'s under any key still accepted.
    pub(crate) fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        self.keys
            .iter()
            .any(|key| hmac::verify(key, message, tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn a_secret_signs_and_its_successor_still_accepts_it() {
        let old = SigningSecrets::parse(&secret(1), &[], "test").unwrap();
        let rotated = SigningSecrets::parse(&secret(2), &[&secret(1)], "test").unwrap();
        let other = SigningSecrets::parse(&secret(3), &[], "test").unwrap();
        let tag = old.keyring("token").sign(b"m");
        assert!(rotated.keyring("token").verify(b"m", tag.as_ref()));
        assert!(!other.keyring("token").verify(b"m", tag.as_ref()));
        // A token's tag is no ticket's.
        assert!(!old.keyring("ticket").verify(b"m", tag.as_ref()));
        // The new secret signs.
        let new_tag = rotated.keyring("token").sign(b"m");
        assert!(!old.keyring("token").verify(b"m", new_tag.as_ref()));
    }

    #[test]
    fn short_or_garbled_secrets_are_refused_without_being_shown() {
        let short = STANDARD.encode([7u8; 16]);
        let err = SigningSecrets::parse(&short, &[], "PITLAKE_SIGNING_KEY").unwrap_err();
        assert!(err.to_string().contains("16 bytes"), "{err}");
        assert!(!err.to_string().contains(&short), "{err}");
        let err = SigningSecrets::parse(&secret(1), &["not base64!"], "f").unwrap_err();
        assert!(err.to_string().contains("previous secret 1"), "{err}");
        assert!(!err.to_string().contains("not base64!"), "{err}");
        let keys = SigningSecrets::parse(&secret(9), &[], "t").unwrap();
        assert!(!format!("{keys:?}").contains(&secret(9)));
        assert!(SigningSecrets::random().unwrap().len() == 1);
    }

    #[test]
    fn a_key_file_lists_the_signing_secret_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            format!("# rotated today\n{}\n\n{}\n", secret(2), secret(1)),
        )
        .unwrap();
        let keys = SigningSecrets::from_file(&path).unwrap();
        assert_eq!(keys.len(), 2);
        let old = SigningSecrets::parse(&secret(1), &[], "t").unwrap();
        let tag = old.keyring("ticket").sign(b"x");
        assert!(keys.keyring("ticket").verify(b"x", tag.as_ref()));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(SigningSecrets::from_file(&path).is_err());
    }
}
