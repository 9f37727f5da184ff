//! Bittensor axon request authentication, as a bittensor 9.x axon performs it for a subnet-72
//! validator (DESIGN.md §5):
//!
//! 1. `computed_body_hash` must equal the hash of the synapse's required hash fields — none for
//!    `ImageSynapse`, so SHA3-256 of the empty string: the image itself is not signed;
//! 2. the dendrite's sr25519 signature (schnorrkel, signing context `substrate`) over
//!    `"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}"` must verify against the
//!    public key inside the dendrite's SS58 hotkey;
//! 3. `bt_header_axon_hotkey` must be our hotkey;
//! 4. nonces: the first request of a `hotkey:uuid` endpoint must be newer than
//!    `now − (4 s + timeout)`; later ones must strictly increase (no replay).
//!
//! Hardening beyond bittensor: the `timeout` header is not signed, so it is clamped to
//! [`MAX_TIMEOUT_S`] (a caller cannot widen the first-contact window to replay a request captured
//! long ago), the uuid is bounded to [`MAX_UUID_LEN`] URL-safe characters, and the nonce memory
//! forgets endpoints whose last nonce is older than the widest window: a replay of anything it
//! forgot is stale by the first-contact rule, so memory stays bounded by traffic × window.
//!
//! SS58: base58 of `prefix ‖ 32-byte public key ‖ checksum`, where the checksum is the first two
//! bytes of BLAKE2b-512(`"SS58PRE" ‖ prefix ‖ key`).

use std::collections::HashMap;
use std::sync::Mutex;

use blake2::{Blake2b512, Digest};
use sha3::Sha3_256;

/// Tolerance bittensor adds to the request timeout for a first nonce, nanoseconds.
pub const ALLOWED_DELTA_NS: u128 = 4_000_000_000;
/// Largest `timeout` header honoured, seconds (bittensor's dendrite default is 12 s; subnet-72
/// validators send 9 s). Larger, negative or non-finite values count as this.
pub const MAX_TIMEOUT_S: f64 = 12.0;
/// Longest dendrite uuid accepted (bittensor sends a 36-character UUID).
pub const MAX_UUID_LEN: usize = 64;
/// The widest first-contact window, nanoseconds.
pub const MAX_WINDOW_NS: u128 = ALLOWED_DELTA_NS + (MAX_TIMEOUT_S as u128) * 1_000_000_000;

/// The `timeout` header as the nonce window uses it: finite, in `[0, MAX_TIMEOUT_S]`; absent,
/// unparsable or non-finite reads as the maximum.
pub fn clamp_timeout(header: Option<&str>) -> f64 {
    match header.and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(t) if t.is_finite() => t.clamp(0.0, MAX_TIMEOUT_S),
        _ => MAX_TIMEOUT_S,
    }
}

/// A uuid the nonce memory may key on: 1..=64 characters of `[A-Za-z0-9-_]`.
pub fn check_uuid(uuid: &str) -> Result<(), AuthError> {
    let ok = !uuid.is_empty()
        && uuid.len() <= MAX_UUID_LEN
        && uuid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadUuid(uuid.chars().take(80).collect()))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("bad SS58 address {address}: {why}")]
    BadAddress { address: String, why: &'static str },
    #[error("bad signature encoding: {0}")]
    BadSignatureEncoding(&'static str),
    #[error("signature does not verify")]
    BadSignature,
    #[error("computed_body_hash {got} does not match the body ({want})")]
    BodyHash { got: String, want: String },
    #[error("request is for axon {got}, not this axon")]
    WrongAxon { got: String },
    #[error("nonce {nonce} is older than the allowed window")]
    StaleNonce { nonce: u128 },
    #[error("nonce {nonce} is not newer than the last seen {last}")]
    ReplayedNonce { nonce: u128, last: u128 },
    #[error("bad nonce {0:?}")]
    BadNonce(String),
    #[error("bad dendrite uuid {0:?} (1 to 64 characters of A-Z a-z 0-9 - _)")]
    BadUuid(String),
}

/// The 32-byte public key inside an SS58 address (any network prefix).
pub fn ss58_public_key(address: &str) -> Result<[u8; 32], AuthError> {
    let bad = |why| AuthError::BadAddress {
        address: address.to_string(),
        why,
    };
    let raw = bs58::decode(address)
        .into_vec()
        .map_err(|_| bad("not base58"))?;
    let prefix_len = match raw.first() {
        Some(b) if *b < 64 => 1,
        Some(b) if *b < 128 => 2,
        _ => return Err(bad("reserved prefix")),
    };
    if raw.len() != prefix_len + 32 + 2 {
        return Err(bad("not a 32-byte account"));
    }
    let (body, checksum) = raw.split_at(prefix_len + 32);
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(body);
    if h.finalize()[..2] != *checksum {
        return Err(bad("checksum mismatch"));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&body[prefix_len..]);
    Ok(key)
}

/// Hex SHA3-256 of the concatenated required hash fields (none for `ImageSynapse`).
pub fn body_hash(required_fields: &[&str]) -> String {
    let mut h = Sha3_256::new();
    for f in required_fields {
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The signed fields of one request.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    pub nonce: &'a str,
    pub dendrite_hotkey: &'a str,
    pub axon_hotkey: &'a str,
    pub uuid: &'a str,
    pub body_hash: &'a str,
    /// `0x` + 128 hex characters.
    pub signature: &'a str,
}

impl SignedRequest<'_> {
    /// The message the dendrite signed.
    pub fn message(&self) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.nonce, self.dendrite_hotkey, self.axon_hotkey, self.uuid, self.body_hash
        )
    }

    /// Checks the sr25519 signature against the dendrite hotkey.
    pub fn verify_signature(&self) -> Result<(), AuthError> {
        let key = ss58_public_key(self.dendrite_hotkey)?;
        let sig_hex = self.signature.strip_prefix("0x").unwrap_or(self.signature);
        let sig = hex::decode(sig_hex).map_err(|_| AuthError::BadSignatureEncoding("not hex"))?;
        let sig = schnorrkel::Signature::from_bytes(&sig)
            .map_err(|_| AuthError::BadSignatureEncoding("not a 64-byte sr25519 signature"))?;
        let public = schnorrkel::PublicKey::from_bytes(&key)
            .map_err(|_| AuthError::BadSignatureEncoding("not an sr25519 public key"))?;
        public
            .verify_simple(b"substrate", self.message().as_bytes(), &sig)
            .map_err(|_| AuthError::BadSignature)
    }
}

/// Sweep the nonce memory at most this often, nanoseconds.
const SWEEP_EVERY_NS: u128 = 1_000_000_000;

#[derive(Debug, Default)]
struct Nonces {
    /// `hotkey:uuid` → last nonce accepted.
    last: HashMap<String, u128>,
    /// When the map was last swept of forgotten endpoints.
    swept_at: u128,
}

/// Per-endpoint nonce memory (`hotkey:uuid` → last nonce), forgetting endpoints whose last nonce
/// is older than [`MAX_WINDOW_NS`].
#[derive(Debug, Default)]
pub struct NonceTracker {
    inner: Mutex<Nonces>,
}

impl NonceTracker {
    /// Applies the nonce rules at time `now_ns` and records the nonce when it passes. Checking
    /// and recording happen under one lock, so two concurrent copies of a request cannot both
    /// pass. `timeout_s` is clamped to `[0, MAX_TIMEOUT_S]`.
    pub fn check(
        &self,
        endpoint: &str,
        nonce: u128,
        timeout_s: f64,
        now_ns: u128,
    ) -> Result<(), AuthError> {
        let mut n = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now_ns.saturating_sub(n.swept_at) >= SWEEP_EVERY_NS {
            // Anything older than the widest window would be refused as stale anyway.
            n.last
                .retain(|_, last| last.saturating_add(MAX_WINDOW_NS) >= now_ns);
            n.swept_at = now_ns;
        }
        match n.last.get(endpoint) {
            Some(&prev) if nonce <= prev => {
                return Err(AuthError::ReplayedNonce { nonce, last: prev });
            }
            Some(_) => {}
            None => {
                let t = if timeout_s.is_finite() {
                    timeout_s.clamp(0.0, MAX_TIMEOUT_S)
                } else {
                    MAX_TIMEOUT_S
                };
                let window = ALLOWED_DELTA_NS.saturating_add((t * 1e9) as u128);
                if nonce.saturating_add(window) < now_ns {
                    return Err(AuthError::StaleNonce { nonce });
                }
            }
        }
        n.last.insert(endpoint.to_string(), nonce);
        Ok(())
    }

    /// Endpoints remembered now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a decimal nonce header.
pub fn parse_nonce(v: &str) -> Result<u128, AuthError> {
    v.trim()
        .parse::<u128>()
        .map_err(|_| AuthError::BadNonce(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The request bittensor 9.12.2 sent from `//Alice` to `//Bob` (public dev keys).
    fn captured() -> Value {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/protocol/imagesynapse_request_bittensor_9.12.2.json"
        );
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn header<'a>(v: &'a Value, name: &str) -> &'a str {
        v["headers"][name].as_str().unwrap()
    }

    fn signed(v: &Value) -> SignedRequest<'_> {
        SignedRequest {
            nonce: header(v, "bt_header_dendrite_nonce"),
            dendrite_hotkey: header(v, "bt_header_dendrite_hotkey"),
            axon_hotkey: header(v, "bt_header_axon_hotkey"),
            uuid: header(v, "bt_header_dendrite_uuid"),
            body_hash: header(v, "computed_body_hash"),
            signature: header(v, "bt_header_dendrite_signature"),
        }
    }

    #[test]
    fn ss58_addresses_decode_to_the_captured_public_keys() {
        let v = captured();
        for (addr, key) in [
            ("validator_ss58", "validator_pubkey_hex"),
            ("miner_ss58", "miner_pubkey_hex"),
        ] {
            let got = ss58_public_key(v[addr].as_str().unwrap()).unwrap();
            assert_eq!(hex::encode(got), v[key].as_str().unwrap());
        }
        let mut bad = v["validator_ss58"].as_str().unwrap().to_string();
        bad.replace_range(5..6, if &bad[5..6] == "a" { "b" } else { "a" });
        assert!(ss58_public_key(&bad).is_err());
        assert!(ss58_public_key("0OIl").is_err());
    }

    #[test]
    fn the_captured_request_verifies_and_tampered_copies_do_not() {
        let v = captured();
        let req = signed(&v);
        assert_eq!(req.body_hash, body_hash(&[]));
        req.verify_signature().unwrap();
        // A flipped byte anywhere in the signed message or the signature fails.
        let uuid = req.uuid.replace('2', "3");
        assert_eq!(
            SignedRequest {
                uuid: &uuid,
                ..req.clone()
            }
            .verify_signature(),
            Err(AuthError::BadSignature)
        );
        let nonce = (parse_nonce(req.nonce).unwrap() + 1).to_string();
        assert_eq!(
            SignedRequest {
                nonce: &nonce,
                ..req.clone()
            }
            .verify_signature(),
            Err(AuthError::BadSignature)
        );
        let mut sig = req.signature.to_string();
        let last = sig.pop().unwrap();
        sig.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            SignedRequest {
                signature: &sig,
                ..req.clone()
            }
            .verify_signature(),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            SignedRequest {
                signature: "0x1234",
                ..req
            }
            .verify_signature(),
            Err(AuthError::BadSignatureEncoding(_))
        ));
    }

    #[test]
    fn nonces_follow_the_axon_rules() {
        let v = captured();
        let nonce = parse_nonce(header(&v, "bt_header_dendrite_nonce")).unwrap();
        let endpoint = format!(
            "{}:{}",
            header(&v, "bt_header_dendrite_hotkey"),
            header(&v, "bt_header_dendrite_uuid")
        );
        // At capture time + 1 s it is fresh; replayed it is refused; a newer one passes.
        let t = NonceTracker::default();
        t.check(&endpoint, nonce, 9.0, nonce + 1_000_000_000)
            .unwrap();
        assert!(matches!(
            t.check(&endpoint, nonce, 9.0, nonce + 1_000_000_000),
            Err(AuthError::ReplayedNonce { .. })
        ));
        t.check(&endpoint, nonce + 1, 9.0, nonce + 2_000_000_000)
            .unwrap();
        // Against the real clock (or 14 s after capture) a first contact is stale.
        let t = NonceTracker::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert!(matches!(
            t.check(&endpoint, nonce, 9.0, now),
            Err(AuthError::StaleNonce { .. })
        ));
        assert!(matches!(
            t.check(&endpoint, nonce, 9.0, nonce + 13_100_000_000),
            Err(AuthError::StaleNonce { .. })
        ));
        assert!(parse_nonce("12a").is_err());
    }

    #[test]
    fn a_caller_chosen_timeout_cannot_widen_the_window_or_overflow_it() {
        let t = NonceTracker::default();
        let nonce = 1_000_000_000_000_000_000u128;
        // 60 s old: stale whatever the header says.
        let now = nonce + 60_000_000_000;
        for timeout in [1e12, 1e30, f64::INFINITY, f64::NAN, -5.0] {
            assert!(matches!(
                t.check("k:u", nonce, timeout, now),
                Err(AuthError::StaleNonce { .. })
            ));
        }
        for (h, want) in [
            (Some("9"), 9.0),
            (Some("1e12"), MAX_TIMEOUT_S),
            (Some("1e30"), MAX_TIMEOUT_S),
            (Some("inf"), MAX_TIMEOUT_S),
            (Some("-3"), 0.0),
            (Some("x"), MAX_TIMEOUT_S),
            (None, MAX_TIMEOUT_S),
        ] {
            assert_eq!(clamp_timeout(h), want, "{h:?}");
        }
        assert!(check_uuid("6f1b2c3d-0000-4000-8000-1234567890ab").is_ok());
        assert!(check_uuid(&"a".repeat(65)).is_err());
        assert!(check_uuid("").is_err() && check_uuid("a:b").is_err());
    }

    #[test]
    fn the_nonce_memory_forgets_what_the_window_refuses_anyway() {
        let t = NonceTracker::default();
        let start = 1_000_000_000_000_000_000u128;
        for i in 0..10_000u128 {
            let now = start + i * 10_000_000; // 100 requests per second
            t.check(&format!("k:{i}"), now, 9.0, now).unwrap();
        }
        // 100 s of traffic, but only the last window's endpoints are remembered.
        assert!(t.len() <= 100 * 17 + 100, "{} endpoints", t.len());
        // A forgotten endpoint's old nonce is still refused, as stale.
        let later = start + 200_000_000_000;
        t.check("k:x", later, 9.0, later).unwrap();
        assert!(matches!(
            t.check("k:0", start, 9.0, later),
            Err(AuthError::StaleNonce { .. })
        ));
    }
}
