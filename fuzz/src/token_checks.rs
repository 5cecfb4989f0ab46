//! Properties of token verification, checked on one fuzz input.
//!
//! The `token_verifier` fuzz target and the auth crate's `fuzz_corpus` test
//! both include this file through `#[path]`, so it may use only `std`,
//! `serde_json` and `keygate_auth`.
//!
//! Input layout: the first byte picks what the rest is.
//! - `0`: a whole token, verified as presented.
//! - `1`: claims JSON, signed with the trusted key under a valid header, so
//!   the claims parser and the claim checks are reached.
//! - `2`: header JSON, signed with the trusted key over valid claims, so the
//!   header checks are reached with a good signature.
//!
//! Properties: verification never panics, and an accepted token carries the
//! trusted key's id and algorithm, the expected issuer and audience, and an
//! expiry that has not passed.

use std::sync::OnceLock;

use keygate_auth::{SigningKey, TokenVerifier, VerifierSettings};

const ISSUER: &str = "fuzz-issuer";
const AUDIENCE: &str = "fuzz-audience";

struct Fixture {
    key: SigningKey,
    verifier: TokenVerifier,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::generate().expect("key generation");
        let verifier = TokenVerifier::new(
            [key.verifying_key().clone()],
            VerifierSettings {
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                leeway_secs: 60,
                max_lifetime_secs: 3600,
            },
        );
        Fixture { key, verifier }
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn valid_claims() -> String {
    let now = now();
    format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"s","acct":"a","scope":"secrets:read","exp":{},"iat":{now},"nbf":{now},"jti":"j"}}"#,
        now + 300
    )
}

fn valid_header(f: &Fixture) -> String {
    format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"JWT"}}"#, f.key.kid())
}

/// Checks one fuzz input; panics if a property is violated. Returns whether
/// the verifier accepted the token built from the input.
pub fn check_token_input(data: &[u8]) -> bool {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => f.key.sign_compact(valid_header(f).as_bytes(), rest),
        _ => f.key.sign_compact(rest, valid_claims().as_bytes()),
    };
    let mut accepted = false;
    for thumbprint in [None, Some("thumb")] {
        if let Ok(principal) = f.verifier.verify(&token, thumbprint) {
            accepted = true;
            check_accepted(f, &token, &format!("{principal:?}"));
        }
    }
    accepted
}

/// Checks that an accepted token has the trusted key's id and algorithm in its header
/// and the required issuer, audience and a live expiry in its claims.
fn check_accepted(f: &Fixture, token: &str, principal: &str) {
    let mut parts = token.split('.');
    let mut segment = || {
        let text = parts.next().expect("three segments");
        serde_json::from_slice::<serde_json::Value>(&decode_base64url(text))
            .expect("accepted segments are JSON")
    };
    let header = segment();
    let claims = segment();
    assert_eq!(header["kid"], f.key.kid(), "accepted {principal}");
    assert_eq!(header["alg"], "EdDSA", "accepted {principal}");
    assert_eq!(claims["iss"], ISSUER, "accepted {principal}");
    assert_eq!(claims["aud"], AUDIENCE, "accepted {principal}");
    let exp = claims["exp"]
        .as_u64()
        .expect("accepted claims have a numeric exp");
    assert!(exp + 60 >= now(), "accepted an expired token: {principal}");
}

fn decode_base64url(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = ALPHABET
            .iter()
            .position(|&c| c == byte)
            .expect("accepted segments are base64url") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// Seed inputs for the corpus, one per mode.
pub fn seeds() -> Vec<Vec<u8>> {
    let f = fixture();
    let mut whole = vec![0u8];
    whole.extend(
        f.key
            .sign_compact(valid_header(f).as_bytes(), valid_claims().as_bytes())
            .as_bytes(),
    );
    let mut claims = vec![1u8];
    claims.extend(valid_claims().as_bytes());
    let mut header = vec![2u8];
    header.extend(valid_header(f).as_bytes());
    vec![whole, claims, header]
}
