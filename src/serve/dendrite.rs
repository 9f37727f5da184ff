//! The validator side of the axon protocol: a dendrite that signs `ImageSynapse` requests the way
//! a bittensor 9.x validator does. The demo and the serving benchmark drive the real server with
//! it, and a miner can point it at their own axon to check it end to end before registering.
//!
//! Headers and body follow the captured 9.12.2 request (`tests/fixtures/protocol/`): the synapse
//! JSON with `image` and `prediction: -1`, `computed_body_hash` = SHA3-256 of nothing, and the
//! sr25519 signature (context `substrate`) over `nonce.dendrite.axon.uuid.body_hash`.

use std::time::Duration;

use blake2::{Blake2b512, Digest};
use serde_json::{Value, json};

use super::auth::body_hash;

/// Substrate's generic SS58 network prefix (what bittensor wallets print).
pub const SS58_PREFIX: u8 = 42;

/// The SS58 address of a 32-byte public key under a one-byte network prefix.
pub fn ss58_encode(public_key: &[u8; 32], prefix: u8) -> String {
    let mut body = vec![prefix];
    body.extend_from_slice(public_key);
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(&body);
    let sum = h.finalize();
    body.extend_from_slice(&sum[..2]);
    bs58::encode(body).into_string()
}

/// Why a query got no prediction.
#[derive(Debug, thiserror::Error)]
pub enum DendriteError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("axon answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("axon reply has no numeric prediction: {0}")]
    BadReply(String),
}

/// A validator identity that signs requests.
pub struct Dendrite {
    pair: schnorrkel::Keypair,
    hotkey: String,
    uuid: String,
    http: reqwest::Client,
}

impl Dendrite {
    /// A keypair from a 32-byte mini secret (substrate's expansion), so a demo validator is
    /// reproducible from its seed.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, String> {
        let mini = schnorrkel::MiniSecretKey::from_bytes(&seed).map_err(|e| e.to_string())?;
        let pair = mini.expand_to_keypair(schnorrkel::ExpansionMode::Ed25519);
        let hotkey = ss58_encode(&pair.public.to_bytes(), SS58_PREFIX);
        let mut h = Blake2b512::new();
        h.update(b"roadwork-dendrite-uuid");
        h.update(seed);
        let d = h.finalize();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            hex::encode(&d[0..4]),
            hex::encode(&d[4..6]),
            hex::encode(&d[6..8]),
            hex::encode(&d[8..10]),
            hex::encode(&d[10..16])
        );
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            pair,
            hotkey,
            uuid,
            http,
        })
    }

    /// Our SS58 hotkey (what the axon's metagraph must list).
    pub fn hotkey(&self) -> &str {
        &self.hotkey
    }

    /// The headers of one request to `axon_hotkey` with `nonce` (nanoseconds since the epoch;
    /// each request needs a larger one than the last).
    pub fn headers(&self, axon_hotkey: &str, nonce: u128, timeout_s: f64) -> Vec<(String, String)> {
        let hash = body_hash(&[]);
        let msg = format!("{nonce}.{}.{axon_hotkey}.{}.{hash}", self.hotkey, self.uuid);
        let sig = self.pair.sign_simple(b"substrate", msg.as_bytes());
        [
            ("name", "ImageSynapse".to_string()),
            ("timeout", format!("{timeout_s:.1}")),
            ("bt_header_axon_hotkey", axon_hotkey.to_string()),
            ("bt_header_dendrite_ip", "127.0.0.1".into()),
            ("bt_header_dendrite_version", "9012002".into()),
            ("bt_header_dendrite_nonce", nonce.to_string()),
            ("bt_header_dendrite_uuid", self.uuid.clone()),
            ("bt_header_dendrite_hotkey", self.hotkey.clone()),
            (
                "bt_header_dendrite_signature",
                format!("0x{}", hex::encode(sig.to_bytes())),
            ),
            ("computed_body_hash", hash),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The synapse body for one base64 image.
    pub fn body(&self, axon_hotkey: &str, image_b64: &str, nonce: u128, timeout_s: f64) -> Value {
        json!({
            "name": "ImageSynapse",
            "timeout": timeout_s,
            "dendrite": {"ip": "127.0.0.1", "version": 9012002, "nonce": nonce,
                         "uuid": self.uuid, "hotkey": self.hotkey},
            "axon": {"hotkey": axon_hotkey},
            "computed_body_hash": "",
            "testnet_label": -1,
            "image": image_b64,
            "prediction": -1.0,
        })
    }

    /// Sends one signed `ImageSynapse` to `base_url` and returns the prediction.
    pub async fn query(
        &self,
        base_url: &str,
        axon_hotkey: &str,
        image_b64: &str,
        timeout: Duration,
    ) -> Result<f64, DendriteError> {
        self.ask(base_url, axon_hotkey, image_b64, timeout)
            .await
            .map(|a| a.prediction)
    }

    /// [`query`](Self::query), also naming the request id the axon logs the answer under
    /// (`hotkey:uuid:nonce`), so a caller can find the answer in the store afterwards.
    pub async fn ask(
        &self,
        base_url: &str,
        axon_hotkey: &str,
        image_b64: &str,
        timeout: Duration,
    ) -> Result<Answered, DendriteError> {
        let nonce = next_nonce();
        let request_id = format!("{}:{}:{nonce}", self.hotkey, self.uuid);
        let t = timeout.as_secs_f64();
        let mut req = self
            .http
            .post(format!("{}/ImageSynapse", base_url.trim_end_matches('/')))
            .timeout(timeout)
            .json(&self.body(axon_hotkey, image_b64, nonce, t));
        for (k, v) in self.headers(axon_hotkey, nonce, t) {
            req = req.header(k, v);
        }
        let r = req
            .send()
            .await
            .map_err(|e| DendriteError::Transport(e.to_string()))?;
        let status = r.status().as_u16();
        let text = r
            .text()
            .await
            .map_err(|e| DendriteError::Transport(e.to_string()))?;
        if status != 200 {
            return Err(DendriteError::Status { status, body: text });
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| DendriteError::BadReply(text.chars().take(200).collect()))?;
        let prediction = v
            .get("prediction")
            .and_then(Value::as_f64)
            .ok_or_else(|| DendriteError::BadReply(text.chars().take(200).collect()))?;
        Ok(Answered {
            prediction,
            request_id,
        })
    }
}

/// One answered query.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub prediction: f64,
    /// What the axon's query log and the `predictions` table key the answer by.
    pub request_id: String,
}

/// Wall-clock nanoseconds, strictly increasing within the process (two requests in the same
/// nanosecond would otherwise look like a replay).
fn next_nonce() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next as u128,
            Err(p) => prev = p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{SignedRequest, ss58_public_key};

    #[test]
    fn ss58_round_trips_the_captured_keys() {
        for addr in [
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
            "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
        ] {
            let key = ss58_public_key(addr).unwrap();
            assert_eq!(ss58_encode(&key, SS58_PREFIX), addr);
        }
    }

    #[test]
    fn signed_headers_verify_and_a_different_axon_does_not() {
        let d = Dendrite::from_seed([7; 32]).unwrap();
        let axon = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
        let h: std::collections::HashMap<String, String> = d
            .headers(axon, 1_800_000_000_000_000_000, 9.0)
            .into_iter()
            .collect();
        let req = |axon_hotkey: &str| {
            SignedRequest {
                nonce: &h["bt_header_dendrite_nonce"],
                dendrite_hotkey: &h["bt_header_dendrite_hotkey"],
                axon_hotkey,
                uuid: &h["bt_header_dendrite_uuid"],
                body_hash: &h["computed_body_hash"],
                signature: &h["bt_header_dendrite_signature"],
            }
            .verify_signature()
        };
        assert!(req(axon).is_ok());
        assert!(req(d.hotkey()).is_err());
        assert!(next_nonce() < next_nonce());
    }
}
