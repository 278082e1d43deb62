//! Who may do what: a principal's grants, and the check of one action on one
//! resource against them.
//!
//! Grants are allow-lists; anything not granted is denied. A pattern is
//! either `*` (everything), a prefix ending in `*` (`orders*`), or an exact
//! name. `admin` covers every action on every resource.

use std::fmt;

use serde::Deserialize;

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Append records to a topic.
    Produce,
    /// Read records or offsets of a topic.
    Consume,
    /// Join, leave, commit to or read the offsets of a consumer group.
    Group,
    /// Change the cluster: topics, membership.
    Admin,
}

impl Action {
    /// The word used in denial messages, logs and the auth file.
    pub fn name(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Group => "use group",
            Action::Admin => "administer",
        }
    }
}

/// A topic or group name pattern from the auth file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern(String);

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let body = s.strip_suffix('*').unwrap_or(&s);
        if body.contains('*') {
            return Err(format!(
                "pattern {s:?}: `*` is allowed only at the end (a prefix match)"
            ));
        }
        Ok(Pattern(s))
    }
}

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
}

/// A caller the broker knows, with what it may do.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub admin: bool,
    pub produce: Vec<Pattern>,
    pub consume: Vec<Pattern>,
    pub groups: Vec<Pattern>,
    /// Produce bytes per second this principal may send, all connections
    /// together; `None`: unlimited.
    pub produce_bytes_per_sec: Option<u64>,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Principal {
    /// Whether this principal may do `action` on `resource` (a topic for
    /// produce and consume, a group for group actions; ignored for admin).
    pub fn allows(&self, action: Action, resource: &str) -> bool {
        if self.admin {
            return true;
        }
        let grants = match action {
            Action::Produce => &self.produce,
            Action::Consume => &self.consume,
            Action::Group => &self.groups,
            Action::Admin => return false,
        };
        grants.iter().any(|p| p.matches(resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(produce: &[&str], consume: &[&str]) -> Principal {
        let pats = |v: &[&str]| {
            v.iter()
                .map(|s| Pattern::try_from(s.to_string()).unwrap())
                .collect()
        };
        Principal {
            name: "p".into(),
            admin: false,
            produce: pats(produce),
            consume: pats(consume),
            groups: Vec::new(),
            produce_bytes_per_sec: None,
        }
    }

    #[test]
    fn prefix_and_exact_patterns_grant_only_what_they_name() {
        let p = principal(&["orders*"], &["audit"]);
        assert!(p.allows(Action::Produce, "orders"));
        assert!(p.allows(Action::Produce, "orders-eu"));
        assert!(!p.allows(Action::Produce, "order"));
        assert!(!p.allows(Action::Consume, "orders"));
        assert!(p.allows(Action::Consume, "audit"));
        assert!(!p.allows(Action::Consume, "audit2"));
        assert!(!p.allows(Action::Group, "g"));
        assert!(!p.allows(Action::Admin, ""));
    }

    #[test]
    fn admin_may_do_everything() {
        let mut p = principal(&[], &[]);
        p.admin = true;
        assert!(p.allows(Action::Admin, ""));
        assert!(p.allows(Action::Produce, "x"));
    }

    #[test]
    fn a_star_inside_a_pattern_is_refused() {
        assert!(Pattern::try_from("a*b".to_string()).is_err());
        assert!(
            Pattern::try_from("*".to_string())
                .unwrap()
                .matches("anything")
        );
    }
}
