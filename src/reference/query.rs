//! Classification of the image strings given to CRI `ImageStatus` /
//! `RemoveImage` (modelled on upstream `ParseAnyReference`).

use once_cell::sync::Lazy;
use regex::Regex;

use super::digest::is_valid_digest;
use super::regexp::ANCHORED_IDENTIFIER;
use super::{trunc, Reference, ReferenceError};

/// `sha256:` followed by a truncated (4..=63 hex) image ID.
static SHA256_SHORT_ID: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^sha256:([a-f0-9]{4,63})$").expect("valid regexp"));
/// A bare string that could also be a truncated image ID.
static BARE_SHORT_ID: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[a-f0-9]{4,64}$").expect("valid regexp"));

/// How an image query string given to ImageStatus/RemoveImage is to be looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageQuery {
    /// `sha256:<64hex>` or bare 64-hex: a full image ID (normalised to
    /// `sha256:<hex>`). Any other valid digest (`sha512:<128hex>`, ...) is
    /// also returned here verbatim.
    Id(String),
    /// A normalised reference (with `:latest` added when it had neither tag
    /// nor digest). `short_id` is `Some(hex)` when the input is also a
    /// truncated image ID (`^[a-f0-9]{4,63}$`); the exact name match should
    /// win over the ID prefix.
    Name {
        reference: Reference,
        short_id: Option<String>,
    },
    /// `sha256:<4..63 hex>`: an image-ID prefix (hex only, without `sha256:`).
    ShortId(String),
}

/// Classify an image query string:
///
/// | input                         | result                                    |
/// |-------------------------------|-------------------------------------------|
/// | `<64 hex>`                    | `Id("sha256:<64 hex>")`                   |
/// | `sha256:<64 hex>` / digest    | `Id(input)`                               |
/// | `sha256:<4..63 hex>`          | `ShortId(hex)`                            |
/// | `<4..63 hex>`                 | `Name { .., short_id: Some(hex) }`        |
/// | anything else                 | `Name { .., short_id: None }` or an error |
///
/// Names are parsed with [`Reference::parse_normalized`] and given
/// [`Reference::with_default_tag`].
pub fn parse_image_query(s: &str) -> Result<ImageQuery, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if s.len() > super::MAX_REFERENCE_LEN {
        return Err(ReferenceError::TooLong);
    }
    if ANCHORED_IDENTIFIER.is_match(s) {
        return Ok(ImageQuery::Id(format!("sha256:{s}")));
    }
    if is_valid_digest(s) {
        return Ok(ImageQuery::Id(s.to_string()));
    }
    if let Some(c) = SHA256_SHORT_ID.captures(s) {
        return Ok(ImageQuery::ShortId(c[1].to_string()));
    }
    let reference = Reference::parse_normalized(s)
        .map_err(|e| match e {
            // Cannot happen (64-hex handled above) but keep the message honest.
            ReferenceError::IdAsName(_) => ReferenceError::Invalid(trunc(s)),
            other => other,
        })?
        .with_default_tag();
    let short_id = BARE_SHORT_ID.is_match(s).then(|| s.to_string());
    Ok(ImageQuery::Name {
        reference,
        short_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";

    fn name(s: &str, short: Option<&str>) -> ImageQuery {
        ImageQuery::Name {
            reference: Reference::parse_normalized(s).unwrap().with_default_tag(),
            short_id: short.map(str::to_string),
        }
    }

    #[test]
    fn full_ids() {
        assert_eq!(
            parse_image_query(H),
            Ok(ImageQuery::Id(format!("sha256:{H}")))
        );
        assert_eq!(
            parse_image_query(&format!("sha256:{H}")),
            Ok(ImageQuery::Id(format!("sha256:{H}")))
        );
        let h512 = format!("sha512:{}", "a".repeat(128));
        assert_eq!(parse_image_query(&h512), Ok(ImageQuery::Id(h512.clone())));
    }

    #[test]
    fn short_ids() {
        assert_eq!(parse_image_query("9f3a"), Ok(name("9f3a", Some("9f3a"))));
        assert_eq!(
            parse_image_query("sha256:9f3a"),
            Ok(ImageQuery::ShortId("9f3a".into()))
        );
        assert_eq!(
            parse_image_query(&format!("sha256:{}", &H[..63])),
            Ok(ImageQuery::ShortId(H[..63].to_string()))
        );
        assert_eq!(
            parse_image_query("deadbeef"),
            Ok(name("deadbeef", Some("deadbeef")))
        );
        // 63 hex chars: a name (upstream ParseAnyReference vector) and an ID prefix.
        assert_eq!(
            parse_image_query(&H[..63]),
            Ok(name(&H[..63], Some(&H[..63])))
        );
        // 3 chars is too short for an ID prefix.
        assert_eq!(parse_image_query("abc"), Ok(name("abc", None)));
        // Short hex with a tag is only a name.
        assert_eq!(parse_image_query("dbcc1:v1"), Ok(name("dbcc1:v1", None)));
    }

    #[test]
    fn names() {
        let q = parse_image_query("busybox").unwrap();
        match q {
            ImageQuery::Name {
                reference,
                short_id,
            } => {
                assert_eq!(reference.to_string(), "docker.io/library/busybox:latest");
                assert_eq!(short_id, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let q = parse_image_query(&format!("redis@sha256:{H}")).unwrap();
        match q {
            ImageQuery::Name { reference, .. } => {
                assert_eq!(reference.tag(), None);
                assert_eq!(reference.digest(), Some(&*format!("sha256:{H}")));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            parse_image_query("quay.io/foo/bar:v1"),
            Ok(name("quay.io/foo/bar:v1", None))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse_image_query(""), Err(ReferenceError::Empty));
        assert!(matches!(
            parse_image_query("ABCD"),
            Err(ReferenceError::NameNotCanonical(_))
        ));
        assert!(matches!(
            parse_image_query("DEADBEEF"),
            Err(ReferenceError::NameNotCanonical(_))
        ));
        assert!(matches!(
            parse_image_query(&H.to_uppercase()),
            Err(ReferenceError::NameNotCanonical(_))
        ));
        assert!(matches!(
            parse_image_query("foo bar"),
            Err(ReferenceError::Invalid(_))
        ));
        assert_eq!(
            parse_image_query(&"a".repeat(4097)),
            Err(ReferenceError::TooLong)
        );
        assert!(matches!(
            parse_image_query(&format!("busybox@sha256:{}", &H[..40])),
            Err(ReferenceError::BadDigest(_))
        ));
    }
}
