//! Stable UUIDs (RFC 9562 version 5: SHA-1 of a namespace and a name), so the same content
//! gets the same identifiers in every report and reports diff cleanly.

use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};

/// The RFC 9562 URL namespace.
const NAMESPACE_URL: [u8; 16] =
    [0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8];

/// The UUIDv5 of `name` in namespace `ns`.
pub fn v5(ns: &[u8; 16], name: &str) -> [u8; 16] {
    let mut input = Vec::with_capacity(16 + name.len());
    input.extend_from_slice(ns);
    input.extend_from_slice(name.as_bytes());
    let hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, &input);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_ref()[..16]);
    out[6] = (out[6] & 0x0f) | 0x50;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// Canonical lowercase text form.
pub fn format(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A stable UUID for the report object identified by `parts` (joined with `/`), in the
/// namespace `v5(URL, "https://secmetrics.io/report")`.
pub fn stable(parts: &[&str]) -> String {
    let ns = v5(&NAMESPACE_URL, "https://secmetrics.io/report");
    format(&v5(&ns, &parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_9562_example() {
        // RFC 9562 appendix A.4: UUIDv5 of "www.example.com" in the DNS namespace.
        let dns =
            [0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8];
        assert_eq!(format(&v5(&dns, "www.example.com")), "2ed6657d-e927-568b-95e1-2665a8aea6a2");
        assert_eq!(stable(&["a", "b"]), stable(&["a", "b"]));
        assert_ne!(stable(&["a", "b"]), stable(&["a", "c"]));
    }
}
