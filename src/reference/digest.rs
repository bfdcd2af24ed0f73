//! Digest validation (go-digest `Parse`/`Validate` rules for the algorithms a
//! Docker/containerd image store registers) and layer chain IDs.

use sha2::{Digest as _, Sha256};

use super::regexp::GO_DIGEST;

/// Why a digest string was refused (internal; callers see
/// [`super::ReferenceError::BadDigest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DigestProblem {
    /// Does not have the `algorithm:encoded` shape (go-digest `ErrDigestInvalidFormat`).
    Format,
    /// Algorithm is not one of sha256/sha384/sha512 (`ErrDigestUnsupported`).
    Unsupported,
    /// Encoded part has the wrong length for the algorithm (`ErrDigestInvalidLength`).
    Length,
}

/// Hex length of the encoded part for each supported algorithm.
fn encoded_len(algorithm: &str) -> Option<usize> {
    match algorithm {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    }
}

/// Validate a digest the way go-digest's `Parse` does with sha256, sha384 and
/// sha512 registered (the algorithms containerd/Docker link in).
pub(crate) fn check_digest(s: &str) -> Result<(), DigestProblem> {
    if !GO_DIGEST.is_match(s) {
        return Err(DigestProblem::Format);
    }
    let (algorithm, encoded) = s.split_once(':').ok_or(DigestProblem::Format)?;
    let want = encoded_len(algorithm).ok_or(DigestProblem::Unsupported)?;
    if encoded.len() != want {
        return Err(DigestProblem::Length);
    }
    if !encoded
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(DigestProblem::Format);
    }
    Ok(())
}

/// True for `sha256:<64 lower-case hex>`, `sha384:<96 hex>` and
/// `sha512:<128 hex>` — the digests go-digest accepts with those algorithms
/// registered. Any other algorithm (even if it matches the loose reference
/// grammar, e.g. `md5:...`) is refused, as upstream `Parse` refuses it with
/// `ErrDigestUnsupported`.
pub fn is_valid_digest(s: &str) -> bool {
    check_digest(s).is_ok()
}

/// Lower-case hex of a byte slice.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

/// OCI image-spec layer chain IDs:
/// `ChainID(L0) = DiffID(L0)`,
/// `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`, rendered
/// as `sha256:<hex>`. Returns one chain ID per diff ID (empty in, empty out).
/// Diff IDs are used verbatim (not validated).
pub fn chain_id(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(parent.as_bytes());
                h.update(b" ");
                h.update(diff_id.as_bytes());
                format!("sha256:{}", to_hex(&h.finalize()))
            }
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(data: &[u8]) -> String {
        to_hex(&Sha256::digest(data))
    }

    #[test]
    fn digest_validation() {
        let h64 = "f".repeat(64);
        assert!(is_valid_digest(&format!("sha256:{h64}")));
        assert!(is_valid_digest(&format!("sha384:{}", "0".repeat(96))));
        assert!(is_valid_digest(&format!("sha512:{}", "a".repeat(128))));
        assert_eq!(
            check_digest(&format!("sha256:{}", "f".repeat(34))),
            Err(DigestProblem::Length)
        );
        assert_eq!(
            check_digest(&format!("sha256:{}", "f".repeat(65))),
            Err(DigestProblem::Length)
        );
        assert_eq!(
            check_digest(&format!("sha256:{}", "F".repeat(64))),
            Err(DigestProblem::Format)
        );
        assert_eq!(
            check_digest(&format!("sha512:{h64}")),
            Err(DigestProblem::Length)
        );
        assert_eq!(
            check_digest(&format!("invaliddigest:{h64}")),
            Err(DigestProblem::Unsupported)
        );
        assert_eq!(
            check_digest(&format!("md5:{}", "f".repeat(32))),
            Err(DigestProblem::Unsupported)
        );
        assert_eq!(
            check_digest(&format!("SHA256:{h64}")),
            Err(DigestProblem::Format)
        );
        assert_eq!(check_digest(&h64), Err(DigestProblem::Format));
        assert_eq!(check_digest("sha256:"), Err(DigestProblem::Format));
        assert_eq!(check_digest(""), Err(DigestProblem::Format));
        assert_eq!(check_digest("foo"), Err(DigestProblem::Format));
        assert!(!is_valid_digest(&format!("sha256:{}g", "f".repeat(63))));
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        // sha256("") well-known value
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chain_id_vectors() {
        assert!(chain_id(&[]).is_empty());
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        assert_eq!(chain_id(std::slice::from_ref(&a)), vec![a.clone()]);

        let ids = chain_id(&[a.clone(), b.clone(), c.clone()]);
        let c1 = format!("sha256:{}", sha256_hex(format!("{a} {b}").as_bytes()));
        let c2 = format!("sha256:{}", sha256_hex(format!("{c1} {c}").as_bytes()));
        assert_eq!(ids, vec![a.clone(), c1.clone(), c2]);

        // Fixed vector (computed independently with `printf '%s' "$a $b" | sha256sum`).
        assert_eq!(c1, CHAIN_AB);
    }

    const CHAIN_AB: &str =
        "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c";
}
