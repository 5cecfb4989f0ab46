//! Minimal PEM armour for one DER block (RFC 7468), used for key files.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Wraps `der` in `-----BEGIN {label}-----` lines, base64 in 64-column lines.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Extracts the DER bytes of the first block labelled `label`.
pub(crate) fn decode(label: &str, text: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no `{begin}` line"))?
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| format!("no `{end}` line"))?
        + start;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(body)
        .map_err(|e| format!("invalid base64 in the {label} block: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_round_trip() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = super::encode("PRIVATE KEY", &der);
        assert!(text
            .lines()
            .all(|l| l.len() <= 64 || l.starts_with("-----")));
        assert_eq!(super::decode("PRIVATE KEY", &text).unwrap(), der);
    }

    #[test]
    fn pem_wrong_label_rejected() {
        let text = super::encode("CERTIFICATE", b"abc");
        let err = super::decode("PRIVATE KEY", &text).unwrap_err();
        assert!(err.contains("BEGIN PRIVATE KEY"), "{err}");
    }
}
