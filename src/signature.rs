//! HubSpot webhook signatures (v1 and v3), shared by the sandbox (which signs deliveries) and
//! the daemon's webhook listener (which verifies them).
//!
//! The algorithm is HubSpot's published one: v3 is
//! `base64(HMAC-SHA256(secret, METHOD + URI + body + timestamp))`, v1 is
//! `hex(SHA-256(secret + body))`. Verification compares in constant time and enforces HubSpot's
//! five-minute timestamp window, so a captured delivery cannot be replayed later.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How old a v3 timestamp may be before the request is rejected (HubSpot: 5 minutes).
pub const MAX_TIMESTAMP_AGE_MS: i64 = 5 * 60 * 1000;

/// Computes the `X-HubSpot-Signature-v3` header value.
pub fn sign_v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp_ms.to_string().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Computes the legacy `X-HubSpot-Signature` (v1) header value.
pub fn sign_v1(secret: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(body);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a delivery's signature was refused. The variants carry no secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp header is missing")]
    Missing,
    #[error("X-HubSpot-Request-Timestamp is not a number of milliseconds")]
    BadTimestamp,
    #[error("the request timestamp is outside HubSpot's 5-minute window (check the host clock)")]
    Stale,
    #[error(
        "the signature does not match (wrong webhook secret for this portal, or a forged request)"
    )]
    Mismatch,
}

/// Verifies a v3 signature. `uri` must be the full URL HubSpot called, percent-decoded as
/// HubSpot specifies (see [`decode_uri_for_signature`]).
pub fn verify_v3(
    secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    now_ms: i64,
) -> Result<(), SignatureError> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    // Checked: a hostile timestamp near i64::MIN/MAX must be stale, not an overflow.
    let age = now_ms.checked_sub(ts).and_then(i64::checked_abs);
    if age.is_none_or(|a| a > MAX_TIMESTAMP_AGE_MS) {
        return Err(SignatureError::Stale);
    }
    let expected = sign_v3(secret, method, uri, body, ts);
    if expected.as_bytes().ct_eq(sig.trim().as_bytes()).into() {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// HubSpot decodes only these escapes in the URI before signing; all others stay encoded.
pub fn decode_uri_for_signature(uri: &str) -> String {
    const DECODE: [(&str, char); 12] = [
        ("%3A", ':'),
        ("%2F", '/'),
        ("%3F", '?'),
        ("%40", '@'),
        ("%21", '!'),
        ("%24", '$'),
        ("%27", '\''),
        ("%28", '('),
        ("%29", ')'),
        ("%2A", '*'),
        ("%2C", ','),
        ("%3B", ';'),
    ];
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        match tail
            .get(..3)
            .and_then(|esc| DECODE.iter().find(|(e, _)| e.eq_ignore_ascii_case(esc)))
        {
            Some((_, c)) => {
                out.push(*c);
                rest = &tail[3..];
            }
            None => {
                out.push('%');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const URI: &str = "https://www.example.com/webhook_uri";
    const BODY: &[u8] = b"{'example_field':'example_value'}";

    #[test]
    fn v3_matches_published_vector() {
        assert_eq!(
            sign_v3(SECRET, "POST", URI, BODY, 1693657560000),
            "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="
        );
    }

    #[test]
    fn v1_matches_published_vector() {
        assert_eq!(
            sign_v1(SECRET, BODY),
            "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
        );
    }

    #[test]
    fn verify_accepts_fresh_and_rejects_stale_tampered_missing() {
        let ts = 1693657560000;
        let sig = sign_v3(SECRET, "POST", URI, BODY, ts);
        let ok = verify_v3(
            SECRET,
            "POST",
            URI,
            BODY,
            Some(&ts.to_string()),
            Some(&sig),
            ts + 1000,
        );
        assert_eq!(ok, Ok(()));
        let stale = verify_v3(
            SECRET,
            "POST",
            URI,
            BODY,
            Some(&ts.to_string()),
            Some(&sig),
            ts + MAX_TIMESTAMP_AGE_MS + 1,
        );
        assert_eq!(stale, Err(SignatureError::Stale));
        let tampered = verify_v3(
            SECRET,
            "POST",
            URI,
            b"{}",
            Some(&ts.to_string()),
            Some(&sig),
            ts,
        );
        assert_eq!(tampered, Err(SignatureError::Mismatch));
        assert_eq!(
            verify_v3(SECRET, "POST", URI, BODY, None, Some(&sig), ts),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_v3(SECRET, "POST", URI, BODY, Some("soon"), Some(&sig), ts),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn uri_decoding_touches_only_listed_escapes() {
        assert_eq!(
            decode_uri_for_signature("https://x.test/a%3Ab%20c%2fd?e=%40%zz%"),
            "https://x.test/a:b%20c/d?e=@%zz%"
        );
    }

    #[test]
    fn hostile_timestamps_are_stale_not_an_overflow() {
        let now = 1_700_000_000_000;
        for ts in [i64::MIN, i64::MAX, now + i64::MIN, -1] {
            let t = ts.to_string();
            let sig = sign_v3("s", "POST", "http://x/y", b"[]", ts);
            assert_eq!(
                verify_v3("s", "POST", "http://x/y", b"[]", Some(&t), Some(&sig), now),
                Err(SignatureError::Stale),
                "{ts}"
            );
        }
    }
}
