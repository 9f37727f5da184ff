//! Tier 2 of the cascade: a vision-language model asked a yes/no question over an
//! OpenAI-compatible `POST {url}/chat/completions` (how vLLM and SGLang serve Qwen-VL, Molmo or
//! Florence-2). Tier 1 answers most images alone; only those whose calibrated probability lies in
//! `[low, high]` are escalated, and only while the deadline leaves time for it.
//!
//! The image travels as a `data:` URI in an `image_url` content part. When the server returns
//! token log-probabilities (`logprobs: true, top_logprobs: k`), P(yes) is read from the first
//! generated token: the probability mass of the "yes" spellings over that of "yes" + "no" (a
//! spelling absent from the top k gets the smallest listed probability, an upper bound on its
//! mass). Without log-probabilities a bare "yes"/"no" counts as `text_confidence`. Anything else
//! — a timeout, a non-2xx status, a body that is not a chat completion, an answer that is neither
//! yes nor no — is an error, and the caller keeps tier 1's answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `[serve.tier2]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tier2Config {
    /// Base URL of the OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`.
    pub url: String,
    /// Model name the server expects in `model`.
    pub model: String,
    /// Environment variable holding a bearer token, when the endpoint wants one (never the token
    /// itself: configs get committed).
    pub api_key_env: Option<String>,
    /// The yes/no question asked with each image.
    pub question: String,
    /// Escalate when tier 1's calibrated probability is in `[low, high]`.
    pub low: f32,
    pub high: f32,
    /// Final answer = `weight` · tier 2 + (1 − `weight`) · tier 1.
    pub weight: f32,
    /// P(yes) for a bare "yes" when the server returns no log-probabilities.
    pub text_confidence: f32,
    /// How many alternatives to ask for per token (OpenAI allows up to 20).
    pub top_logprobs: u8,
    /// Time kept back from the deadline for logging and the reply, milliseconds.
    pub reserve_ms: u64,
    /// Requests to the VLM at once (per server); an escalation that cannot get a slot in time
    /// keeps tier 1's answer.
    pub max_concurrent: usize,
}

impl Default for Tier2Config {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8000/v1".into(),
            model: "Qwen/Qwen2.5-VL-7B-Instruct".into(),
            api_key_env: None,
            question: "Is there road work or a construction zone (cones, barriers, work vehicles, \
                       workers, road signs for works) in this street image? Answer yes or no."
                .into(),
            low: 0.2,
            high: 0.8,
            weight: 0.7,
            text_confidence: 0.85,
            top_logprobs: 10,
            reserve_ms: 150,
            max_concurrent: 8,
        }
    }
}

impl Tier2Config {
    /// Range checks serde cannot do.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f32| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(unit(self.low) && unit(self.high) && self.low <= self.high) {
            return Err("serve.tier2 needs 0 <= low <= high <= 1".into());
        }
        if !unit(self.weight) || !unit(self.text_confidence) {
            return Err("serve.tier2.weight and text_confidence must be in [0, 1]".into());
        }
        if self.max_concurrent == 0 {
            return Err("serve.tier2.max_concurrent must be at least 1".into());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "serve.tier2.url {:?} is not an http(s) URL",
                self.url
            ));
        }
        Ok(())
    }

    /// Whether a tier-1 probability goes to tier 2.
    pub fn escalates(&self, p1: f32) -> bool {
        (self.low..=self.high).contains(&p1)
    }

    /// The combined answer.
    pub fn combine(&self, p1: f32, p2: f32) -> f32 {
        (self.weight * p2 + (1.0 - self.weight) * p1).clamp(0.0, 1.0)
    }
}

/// Why tier 2 gave no answer (the caller keeps tier 1's).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Tier2Error {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("VLM endpoint answered HTTP {0}")]
    Status(u16),
    #[error("VLM endpoint unreachable: {0}")]
    Transport(String),
    #[error("VLM answer unusable: {0}")]
    Garbage(String),
}

impl Tier2Error {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Tier2Error::Timeout(_) => "timeout",
            Tier2Error::Status(_) => "http_error",
            Tier2Error::Transport(_) => "unreachable",
            Tier2Error::Garbage(_) => "garbage",
        }
    }
}

/// The VLM's P(yes) and how it was read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tier2Answer {
    pub p_yes: f32,
    /// True when read from log-probabilities, false from the text alone.
    pub from_logprobs: bool,
}

/// A client for one endpoint, shared by every profile that escalates.
pub struct Tier2 {
    pub cfg: Tier2Config,
    http: reqwest::Client,
    api_key: Option<String>,
    slots: tokio::sync::Semaphore,
}

impl Tier2 {
    /// Reads the API key from the named environment variable (an unset variable is an error:
    /// silently calling without the key would fail every request later).
    pub fn new(cfg: Tier2Config) -> Result<Self, String> {
        cfg.validate()?;
        let api_key = match &cfg.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| format!("serve.tier2.api_key_env: ${var} is not set"))?,
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(cfg.max_concurrent)
            .build()
            .map_err(|e| format!("tier 2 HTTP client: {e}"))?;
        let slots = tokio::sync::Semaphore::new(cfg.max_concurrent);
        Ok(Self {
            cfg,
            http,
            api_key,
            slots,
        })
    }

    /// The chat-completions body for one image.
    pub fn request_body(&self, image: &[u8]) -> Value {
        use base64::Engine as _;
        let mime = mime_of(image);
        let uri = format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(image)
        );
        json!({
            "model": self.cfg.model,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": uri}},
                    {"type": "text", "text": self.cfg.question},
                ],
            }],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": true,
            "top_logprobs": self.cfg.top_logprobs,
        })
    }

    /// Asks the VLM about `image`, giving up after `budget` (waiting for a slot included).
    pub async fn ask(&self, image: &[u8], budget: Duration) -> Result<Tier2Answer, Tier2Error> {
        let ms = budget.as_millis() as u64;
        let work = async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| Tier2Error::Transport("client closed".into()))?;
            let url = format!("{}/chat/completions", self.cfg.url.trim_end_matches('/'));
            let mut req = self.http.post(url).json(&self.request_body(image));
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Tier2Error::Transport(e.without_url().to_string()))?;
            if !resp.status().is_success() {
                return Err(Tier2Error::Status(resp.status().as_u16()));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| Tier2Error::Transport(e.without_url().to_string()))?;
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| Tier2Error::Garbage(format!("not JSON: {e}")))?;
            read_answer(&v, self.cfg.text_confidence)
        };
        tokio::time::timeout(budget, work)
            .await
            .map_err(|_| Tier2Error::Timeout(ms))?
    }
}

/// The MIME type for the data URI (servers decode with PIL or similar; the type is advisory but
/// some check it).
fn mime_of(image: &[u8]) -> &'static str {
    match image::guess_format(image) {
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::WebP) => "image/webp",
        Ok(image::ImageFormat::Gif) => "image/gif",
        Ok(image::ImageFormat::Bmp) => "image/bmp",
        _ => "image/jpeg",
    }
}

/// "Yes", " yes", "YES.", "▁Yes" → Some(true); the no spellings → Some(false).
fn yes_no(token: &str) -> Option<bool> {
    let t: String = token
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    match t.as_str() {
        "yes" | "y" | "true" => Some(true),
        "no" | "n" | "false" => Some(false),
        _ => None,
    }
}

/// P(yes) from a chat-completion response.
pub fn read_answer(v: &Value, text_confidence: f32) -> Result<Tier2Answer, Tier2Error> {
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| Tier2Error::Garbage("no choices".into()))?;
    let first = choice
        .pointer("/logprobs/content/0")
        .filter(|t| t.is_object());
    if let Some(tok) = first {
        let mut alts: Vec<(String, f64)> = tok
            .get("top_logprobs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        Some((
                            t.get("token")?.as_str()?.to_string(),
                            t.get("logprob")?.as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let (Some(t), Some(lp)) = (
            tok.get("token").and_then(Value::as_str),
            tok.get("logprob").and_then(Value::as_f64),
        ) && !alts.iter().any(|(a, _)| a == t)
        {
            alts.push((t.to_string(), lp));
        }
        let probs: Vec<(Option<bool>, f64)> = alts
            .iter()
            .filter(|(_, lp)| lp.is_finite() && *lp <= 1e-6)
            .map(|(t, lp)| (yes_no(t), lp.exp()))
            .collect();
        let mass = |want: bool| -> f64 {
            probs
                .iter()
                .filter(|(k, _)| *k == Some(want))
                .map(|(_, p)| p)
                .sum()
        };
        let (yes, no) = (mass(true), mass(false));
        if yes + no > 0.0 {
            let floor = probs.iter().map(|(_, p)| *p).fold(f64::INFINITY, f64::min);
            let (yes, no) = (
                if yes > 0.0 { yes } else { floor },
                if no > 0.0 { no } else { floor },
            );
            let p = (yes / (yes + no)) as f32;
            if p.is_finite() {
                return Ok(Tier2Answer {
                    p_yes: p.clamp(0.0, 1.0),
                    from_logprobs: true,
                });
            }
        }
    }
    let text = choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| Tier2Error::Garbage("no message content".into()))?;
    let word = text.split_whitespace().next().unwrap_or("");
    match yes_no(word) {
        Some(true) => Ok(Tier2Answer {
            p_yes: text_confidence,
            from_logprobs: false,
        }),
        Some(false) => Ok(Tier2Answer {
            p_yes: 1.0 - text_confidence,
            from_logprobs: false,
        }),
        None => Err(Tier2Error::Garbage(format!(
            "neither yes nor no: {:?}",
            text.chars().take(40).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str, top: &[(&str, f64)]) -> Value {
        let top: Vec<Value> = top
            .iter()
            .map(|(t, lp)| json!({"token": t, "logprob": lp}))
            .collect();
        json!({"choices": [{"message": {"role": "assistant", "content": content},
            "logprobs": {"content": [{"token": content, "logprob": top.first()
                .and_then(|t| t["logprob"].as_f64()).unwrap_or(0.0), "top_logprobs": top}]}}]})
    }

    #[test]
    fn logprobs_give_the_yes_share_of_yes_and_no() {
        let v = completion(
            "Yes",
            &[
                ("Yes", (0.6f64).ln()),
                (" yes", (0.1f64).ln()),
                ("No", (0.2f64).ln()),
                ("Maybe", (0.05f64).ln()),
            ],
        );
        let a = read_answer(&v, 0.85).unwrap();
        assert!(a.from_logprobs);
        assert!((a.p_yes - 0.7 / 0.9).abs() < 1e-5, "{}", a.p_yes);
    }

    #[test]
    fn a_missing_alternative_gets_the_smallest_listed_mass() {
        let v = completion("no", &[("no", (0.9f64).ln()), ("The", (0.02f64).ln())]);
        let a = read_answer(&v, 0.85).unwrap();
        assert!((a.p_yes - 0.02 / 0.92).abs() < 1e-5, "{}", a.p_yes);
    }

    #[test]
    fn text_alone_counts_as_the_configured_confidence_and_garbage_is_refused() {
        let bare = |s: &str| json!({"choices": [{"message": {"content": s}}]});
        assert_eq!(read_answer(&bare("Yes.").clone(), 0.8).unwrap().p_yes, 0.8);
        assert!((read_answer(&bare(" no"), 0.8).unwrap().p_yes - 0.2).abs() < 1e-6);
        for g in [
            bare("Perhaps"),
            bare(""),
            json!({"choices": []}),
            json!({"error": "x"}),
        ] {
            assert!(
                matches!(read_answer(&g, 0.8), Err(Tier2Error::Garbage(_))),
                "{g}"
            );
        }
        // Log-probabilities with neither yes nor no fall back to the text, which is garbage too.
        let v = completion("Maybe", &[("Maybe", -0.1), ("Perhaps", -2.0)]);
        assert!(read_answer(&v, 0.8).is_err());
    }

    #[test]
    fn escalation_band_and_blend() {
        let c = Tier2Config {
            low: 0.3,
            high: 0.7,
            weight: 0.75,
            ..Default::default()
        };
        assert!(c.escalates(0.3) && c.escalates(0.5) && !c.escalates(0.71) && !c.escalates(0.1));
        assert!((c.combine(0.4, 0.8) - 0.7).abs() < 1e-6);
        assert!(
            Tier2Config {
                low: 0.8,
                high: 0.2,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
