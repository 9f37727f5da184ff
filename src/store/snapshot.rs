//! Snapshot names: the API speaks `train/<model_id>`; Lance tags allow only `[A-Za-z0-9._-]`, so a `/`
//! is stored as `__` (and `__` is refused inside a segment, keeping the mapping reversible).

use super::StoreError;

const SEP: &str = "__";

/// A validated snapshot name, e.g. `train/head-20261125-01`. Serialized as the name; a
/// deserialized one is validated like a parsed one.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotName(String);

impl TryFrom<String> for SnapshotName {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SnapshotName> for String {
    fn from(n: SnapshotName) -> Self {
        n.0
    }
}

impl SnapshotName {
    /// Checks the name: non-empty `/`-separated segments of letters, digits, `.`, `-`, `_`, no `__`,
    /// not starting or ending with `.` and not ending in `.lock` (Lance's rules per segment).
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::BadSnapshotName {
            name: name.to_string(),
            why: why.to_string(),
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        for seg in name.split('/') {
            if seg.is_empty() {
                return Err(bad("empty segment between '/'"));
            }
            if !seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                return Err(bad(
                    "only letters, digits, '.', '-', '_' and '/' are allowed",
                ));
            }
            if seg.contains(SEP) {
                return Err(bad("'__' is reserved"));
            }
        }
        if name.starts_with('.') || name.ends_with('.') || name.ends_with(".lock") {
            return Err(bad("may not start or end with '.', or end with '.lock'"));
        }
        Ok(Self(name.to_string()))
    }

    /// The Lance tag this name is stored as.
    pub fn to_tag(&self) -> String {
        self.0.replace('/', SEP)
    }

    /// The name a stored Lance tag stands for.
    pub fn from_tag(tag: &str) -> Self {
        Self(tag.replace(SEP, "/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let n = SnapshotName::parse("train/head-1.2_a").unwrap();
        assert_eq!(n.to_tag(), "train__head-1.2_a");
        assert_eq!(SnapshotName::from_tag(&n.to_tag()), n);
        for bad in ["", "a//b", "/a", "a b", "a__b", ".a", "a.lock", "a/ü"] {
            assert!(SnapshotName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
