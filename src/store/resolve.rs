//! Resolution of a user's image string over the index, as containerd's CRI and
//! Docker do: exact name first (`name@digest` only within that repository),
//! full ID, then a unique short-ID prefix among image IDs.

use crate::reference::{self, ImageQuery, ReferenceError};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("ambiguous image reference {query:?}: it is a prefix of {count} or more image IDs; use more characters")]
    Ambiguous { query: String, count: usize },
    #[error(transparent)]
    Store(super::StoreError),
}

/// `lookup(record name)` gives the image ID of a record; `prefixed(p)` up to
/// two image IDs starting with `p` (two are enough to call it ambiguous).
pub fn resolve<L, P>(query: &str, lookup: L, prefixed: P) -> Result<Option<String>, ResolveError>
where
    L: Fn(&str) -> Option<String>,
    P: Fn(&str) -> Vec<String>,
{
    match reference::parse_image_query(query)? {
        ImageQuery::Id(id) => {
            if let Some(found) = lookup(&id) {
                return Ok(Some(found));
            }
            Ok(prefixed(&id).into_iter().find(|i| *i == id))
        }
        ImageQuery::Name {
            reference,
            short_id,
        } => {
            // name:tag@digest resolves by the digest.
            let key = match reference.name_digest() {
                Some(d) => d,
                None => reference.name_tag().unwrap_or_else(|| reference.name()),
            };
            if let Some(id) = lookup(&key) {
                return Ok(Some(id));
            }
            match short_id {
                Some(prefix) => by_prefix(query, &prefix, &prefixed),
                None => Ok(None),
            }
        }
        ImageQuery::ShortId(prefix) => by_prefix(query, &prefix, &prefixed),
    }
}

fn by_prefix(
    query: &str,
    prefix: &str,
    prefixed: &dyn Fn(&str) -> Vec<String>,
) -> Result<Option<String>, ResolveError> {
    let want = format!("sha256:{prefix}");
    let ids = prefixed(&want);
    let mut found: Option<String> = None;
    let mut count = 0;
    for id in ids {
        if id.starts_with(&want) && found.as_deref() != Some(id.as_str()) {
            count += 1;
            found = Some(id);
        }
    }
    match count {
        0 => Ok(None),
        1 => Ok(found),
        n => Err(ResolveError::Ambiguous {
            query: query.to_string(),
            count: n,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const A: &str = "sha256:deadbeef00000000000000000000000000000000000000000000000000000001";
    const B: &str = "sha256:deadbeef00000000000000000000000000000000000000000000000000000002";
    const C: &str = "sha256:cafe000000000000000000000000000000000000000000000000000000000003";
    const DGST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn world() -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("docker.io/library/busybox:latest".into(), A.into());
        m.insert(format!("docker.io/library/busybox@{DGST}"), A.into());
        m.insert("docker.io/library/other:1".into(), B.into());
        m.insert("docker.io/library/cafe:latest".into(), B.into());
        m.insert("docker.io/library/deadbeef:latest".into(), C.into());
        m.insert(C.into(), C.into());
        m
    }

    fn r(q: &str) -> Result<Option<String>, ResolveError> {
        let w = world();
        let ids = [A, B, C];
        resolve(
            q,
            |n| w.get(n).cloned(),
            |p| {
                ids.iter()
                    .filter(|i| i.starts_with(p))
                    .take(2)
                    .map(|s| s.to_string())
                    .collect()
            },
        )
    }

    #[test]
    fn by_name_digest_id_and_prefix() {
        assert_eq!(r("busybox").unwrap().as_deref(), Some(A));
        assert_eq!(
            r("docker.io/library/busybox:latest").unwrap().as_deref(),
            Some(A)
        );
        assert_eq!(r(&format!("busybox@{DGST}")).unwrap().as_deref(), Some(A));
        assert_eq!(
            r(&format!("busybox:whatever@{DGST}")).unwrap().as_deref(),
            Some(A)
        );
        assert_eq!(r(A).unwrap().as_deref(), Some(A));
        assert_eq!(r(&A[7..]).unwrap().as_deref(), Some(A));
        assert_eq!(r("cafe0").unwrap().as_deref(), Some(C));
        assert_eq!(r("sha256:cafe0").unwrap().as_deref(), Some(C));
    }

    #[test]
    fn digest_only_within_its_repository() {
        assert_eq!(r(&format!("other@{DGST}")).unwrap(), None);
    }

    #[test]
    fn ambiguous_prefix_unless_a_name_matches() {
        // "deadbeef" is both a repository name and a prefix of A and B: the name wins.
        assert_eq!(r("deadbeef").unwrap().as_deref(), Some(C));
        // "deadbeef0" is not a name: ambiguous between A and B.
        let e = r("deadbeef0").unwrap_err();
        assert!(e.to_string().contains("ambiguous"), "{e}");
        // "cafe" is a name (tagged latest) and a prefix of C: the name wins.
        assert_eq!(r("cafe").unwrap().as_deref(), Some(B));
    }

    #[test]
    fn absent_and_invalid() {
        assert_eq!(r("nothere").unwrap(), None);
        assert_eq!(r("abcd").unwrap(), None);
        assert!(matches!(r("UPPER"), Err(ResolveError::Reference(_))));
        assert!(matches!(r(""), Err(ResolveError::Reference(_))));
    }
}
