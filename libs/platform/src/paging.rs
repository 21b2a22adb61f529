//! Paging for every List method (AIP-158): `page_size` 0 means the default, values above the
//! maximum are treated as the maximum, negative is `INVALID_ARGUMENT`; a `page_token` is opaque
//! to callers, valid only with the same request (its other fields), and a token that was
//! altered, or belongs to another request, is `INVALID_ARGUMENT` (`INVALID_PAGE_TOKEN`).
//! Tokens are integrity-checked, not secret: authorisation is applied to every page anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// The number of items a page holds, from the request's `page_size`.
pub fn page_size(requested: i32) -> Result<usize, ApiError> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
        Err(_) => Err(ApiError::invalid_argument(
            "INVALID_REQUEST",
            "page_size must not be negative",
        )
        .violation("page_size", "must be 0 (default) or positive")),
    }
}

/// Encodes the position after the last item of a page. `request` identifies the request the
/// token belongs to (its fields other than paging), so a token cannot move between queries.
pub fn encode_token<P: Serialize>(position: &P, request: &str) -> String {
    // Serialising a plain position struct to JSON cannot fail.
    let body = serde_json::to_vec(position).unwrap_or_default();
    let check = checksum(&body, request);
    let mut bytes = check.to_vec();
    bytes.extend_from_slice(&body);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position a `page_token` holds; `None` for the first page.
pub fn decode_token<P: DeserializeOwned>(
    token: &str,
    request: &str,
) -> Result<Option<P>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ApiError::invalid_argument(
            "INVALID_PAGE_TOKEN",
            "page_token is not valid for this request",
        )
        .violation("page_token", "not a token this request returned")
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() < CHECK_LEN {
        return Err(invalid());
    }
    let (check, body) = bytes.split_at(CHECK_LEN);
    if check != checksum(body, request) {
        return Err(invalid());
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|_| invalid())
}

const CHECK_LEN: usize = 12;

fn checksum(body: &[u8], request: &str) -> [u8; CHECK_LEN] {
    let mut hash = Sha256::new();
    hash.update(b"portal-page-token-v1\0");
    hash.update(request.as_bytes());
    hash.update(b"\0");
    hash.update(body);
    let digest = hash.finalize();
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(&digest[..CHECK_LEN]);
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), MAX_PAGE_SIZE);
        let negative = page_size(-1).unwrap_err();
        assert_eq!(negative.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_token_round_trips_for_its_own_request_only() {
        let token = encode_token(&(3_i64, "x"), "kind=terms");
        let back: Option<(i64, String)> = decode_token(&token, "kind=terms").unwrap();
        assert_eq!(back, Some((3, "x".to_owned())));
        let other = decode_token::<(i64, String)>(&token, "kind=privacy-policy").unwrap_err();
        assert_eq!(other.reason(), "INVALID_PAGE_TOKEN");
        assert_eq!(
            decode_token::<(i64, String)>("", "kind=terms").unwrap(),
            None
        );
    }

    #[test]
    fn an_altered_token_is_invalid() {
        let token = encode_token(&41_i64, "q");
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let altered = URL_SAFE_NO_PAD.encode(bytes);
        for bad in [altered.as_str(), "!!!", "abc"] {
            let error = decode_token::<i64>(bad, "q").unwrap_err();
            assert_eq!(error.reason(), "INVALID_PAGE_TOKEN", "{bad}");
        }
    }
}
