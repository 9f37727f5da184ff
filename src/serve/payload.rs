//! The image inside a request: base64 in any of the spellings clients use, with or without a
//! `data:` URI prefix, decoded to bytes before the image decoder sees it.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Why a payload is not an image's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the image field is empty")]
    Empty,
    #[error("the image field is not base64 (standard or URL-safe, padded or not)")]
    NotBase64,
    #[error("the decoded image is {bytes} bytes, above the {limit}-byte limit")]
    TooLarge { bytes: usize, limit: usize },
}

/// Decodes `field` (optionally `data:<mime>;base64,` prefixed; whitespace and newlines ignored)
/// to bytes, refusing more than `limit` decoded bytes before decoding them.
pub fn decode_base64_image(field: &str, limit: usize) -> Result<Vec<u8>, PayloadError> {
    let body = match field.trim_start().strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or("", |(_, b)| b),
        None => field,
    };
    let clean: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if clean.is_empty() {
        return Err(PayloadError::Empty);
    }
    // 4 base64 characters carry 3 bytes.
    let estimate = clean.len() / 4 * 3;
    if estimate > limit.saturating_add(3) {
        return Err(PayloadError::TooLarge {
            bytes: estimate,
            limit,
        });
    }
    let url_safe = clean.contains(['-', '_']);
    let padded = clean.ends_with('=');
    let engines = match (url_safe, padded) {
        (false, true) => [&STANDARD, &URL_SAFE],
        (false, false) => [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD],
        (true, true) => [&URL_SAFE, &STANDARD],
        (true, false) => [&URL_SAFE_NO_PAD, &STANDARD_NO_PAD],
    };
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(&clean).ok())
        .ok_or(PayloadError::NotBase64)?;
    if bytes.is_empty() {
        return Err(PayloadError::Empty);
    }
    if bytes.len() > limit {
        return Err(PayloadError::TooLarge {
            bytes: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_decodes_to_the_same_bytes() {
        let raw: Vec<u8> = (0u8..=255).chain([0xfb, 0xff, 0xfe]).collect();
        let spellings = [
            STANDARD.encode(&raw),
            STANDARD_NO_PAD.encode(&raw),
            URL_SAFE.encode(&raw),
            URL_SAFE_NO_PAD.encode(&raw),
            format!("data:image/jpeg;base64,{}", STANDARD.encode(&raw)),
            STANDARD
                .encode(&raw)
                .as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("\n"),
        ];
        for s in &spellings {
            assert_eq!(decode_base64_image(s, 1 << 20).unwrap(), raw, "{s:.40}");
        }
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert_eq!(decode_base64_image("", 10), Err(PayloadError::Empty));
        assert_eq!(
            decode_base64_image("data:image/png;base64,", 10),
            Err(PayloadError::Empty)
        );
        assert_eq!(
            decode_base64_image("@@@@", 10),
            Err(PayloadError::NotBase64)
        );
        let big = STANDARD.encode(vec![0u8; 1000]);
        assert!(matches!(
            decode_base64_image(&big, 100),
            Err(PayloadError::TooLarge { .. })
        ));
    }
}
