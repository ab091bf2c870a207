//! Tickets: what `GetFlightInfo` hands out and `DoGet` redeems.
//!
//! A ticket carries everything needed to run the query again — the statement, its bound
//! parameters (Arrow IPC) — plus the user it was issued to, an expiry and a query id, signed with
//! HMAC-SHA256 under a key drawn at start-up. Nothing is stored on the server, so a client that
//! never calls `DoGet` costs nothing. `DoGet` refuses a ticket whose signature does not verify
//! (forged or altered), that has expired, or that was issued to another user (replayed), and
//! then plans and authorizes the statement again, as the caller.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::flight::auth::now_ms;
use crate::flight::keys::{Keyring, SigningSecrets};

const PREFIX: &[u8] = b"plt1.";

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The query id (for logs; the same in `GetFlightInfo` and `DoGet`).
    pub query_id: String,
    /// The user it was issued to.
    pub user: String,
    /// The statement.
    pub sql: String,
    /// Bound parameters: one row, Arrow IPC stream, URL-safe base64.
    pub parameters: Option<String>,
    /// Expiry, milliseconds since the epoch.
    pub expires_ms: i64,
}

/// Signs and verifies tickets.
pub(crate) struct TicketSigner {
    keys: Keyring,
    ttl: Duration,
}

impl TicketSigner {
    /// A signer whose tickets are signed with `secrets` (see `flight::keys`).
    pub fn new(ttl: Duration, secrets: &SigningSecrets) -> Self {
        Self {
            keys: secrets.keyring("ticket"),
            ttl,
        }
    }

    /// A signed ticket for a statement.
    pub fn issue(
        &self,
        query_id: &str,
        user: &str,
        sql: &str,
        parameters: Option<&[u8]>,
    ) -> std::result::Result<Bytes, Status> {
        let claims = Claims {
            query_id: query_id.to_string(),
            user: user.to_string(),
            sql: sql.to_string(),
            parameters: parameters.map(|p| URL_SAFE_NO_PAD.encode(p)),
            expires_ms: now_ms()
                .saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)),
        };
        let json = serde_json::to_vec(&claims)
            .map_err(|e| Status::internal(format!("encoding a ticket failed: {e}")))?;
        let mut out = Vec::with_capacity(PREFIX.len() + json.len() + 33);
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(&json);
        let mac = self.keys.sign(&out);
        out.push(b'.');
        out.extend_from_slice(mac.as_ref());
        Ok(Bytes::from(out))
    }

    /// Checks a ticket's signature, expiry and owner, and returns what it says.
    pub fn redeem(&self, ticket: &[u8], user: &str) -> std::result::Result<Claims, Status> {
        let forged = || {
            Status::permission_denied(
                "the ticket was not issued by this server (or was altered); call GetFlightInfo \
                 again",
            )
        };
        const MAC_LEN: usize = 32;
        if ticket.len() < PREFIX.len() + MAC_LEN + 1 || !ticket.starts_with(PREFIX) {
            return Err(forged());
        }
        let (signed, rest) = ticket.split_at(ticket.len() - MAC_LEN - 1);
        let (dot, mac) = rest.split_at(1);
        if dot != b"." {
            return Err(forged());
        }
        if !self.keys.verify(signed, mac) {
            return Err(forged());
        }
        let claims: Claims =
            serde_json::from_slice(&signed[PREFIX.len()..]).map_err(|_| forged())?;
        if claims.user != user {
            return Err(Status::permission_denied(format!(
                "the ticket was issued to another user, not to `{user}`"
            )));
        }
        if claims.expires_ms <= now_ms() {
            return Err(Status::permission_denied(
                "the ticket has expired; call GetFlightInfo again",
            ));
        }
        Ok(claims)
    }
}

/// Decodes a ticket's parameters.
pub(crate) fn decode_parameters(encoded: &str) -> std::result::Result<Vec<u8>, Status> {
    URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| Status::invalid_argument("the ticket's parameters are not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_bound_to_their_user_and_signature() {
        let secrets = SigningSecrets::random().unwrap();
        let signer = TicketSigner::new(Duration::from_secs(60), &secrets);
        let ticket = signer
            .issue("q1", "alice", "SELECT 1", Some(b"params"))
            .unwrap();
        let claims = signer.redeem(&ticket, "alice").unwrap();
        assert_eq!(claims.sql, "SELECT 1");
        assert_eq!(
            decode_parameters(claims.parameters.as_deref().unwrap()).unwrap(),
            b"params"
        );
        let err = signer.redeem(&ticket, "bob").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("another user"));
        // Change the statement inside: the signature no longer verifies.
        let text =
            String::from_utf8_lossy(&ticket[..ticket.len() - 33]).replace("SELECT 1", "SELECT 2");
        let mut altered = text.into_bytes();
        altered.extend_from_slice(&ticket[ticket.len() - 33..]);
        assert!(
            signer
                .redeem(&altered, "alice")
                .unwrap_err()
                .message()
                .contains("altered")
        );
        assert!(signer.redeem(b"garbage", "alice").is_err());
        let other = TicketSigner::new(Duration::from_secs(60), &SigningSecrets::random().unwrap());
        assert!(other.redeem(&ticket, "alice").is_err());
        let expired = TicketSigner {
            keys: secrets.keyring("ticket"),
            ttl: Duration::ZERO,
        };
        let ticket = expired.issue("q2", "alice", "SELECT 1", None).unwrap();
        assert!(
            expired
                .redeem(&ticket, "alice")
                .unwrap_err()
                .message()
                .contains("expired")
        );
    }
}
