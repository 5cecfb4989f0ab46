//! Scopes: the operations a token permits.

use std::fmt;

/// One permission carried in a token's space-separated `scope` claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Create and manage agents of the token's account.
    AgentsAdmin,
    /// Submit tasks to the account's agents and read their results.
    TasksWrite,
    /// Store secrets and secret definitions in the account's projects.
    SecretsAdmin,
    /// Resolve secret definitions to values (runners).
    SecretsRead,
    /// Open an agent session; only agent tokens carry it.
    AgentSession,
    /// Rotate and inspect the server's token signing keys (an operator scope, not tied to an account).
    KeysAdmin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::AgentsAdmin,
        Scope::TasksWrite,
        Scope::SecretsAdmin,
        Scope::SecretsRead,
        Scope::AgentSession,
        Scope::KeysAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AgentsAdmin => "agents:admin",
            Scope::TasksWrite => "tasks:write",
            Scope::SecretsAdmin => "secrets:admin",
            Scope::SecretsRead => "secrets:read",
            Scope::AgentSession => "agent:session",
            Scope::KeysAdmin => "keys:admin",
        }
    }

    /// Scopes of platform callers and runners; `agent:session` comes only from the agent token endpoint.
    pub const PLATFORM: [Scope; 5] = [
        Scope::AgentsAdmin,
        Scope::TasksWrite,
        Scope::SecretsAdmin,
        Scope::SecretsRead,
        Scope::KeysAdmin,
    ];

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeSet(u8);

impl ScopeSet {
    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Parses a space-separated scope string. Unknown scopes are ignored, so a
    /// token minted for a newer server still works with the scopes this one supports.
    pub fn from_claim(text: &str) -> ScopeSet {
        let mut set = ScopeSet::default();
        for scope in text.split_ascii_whitespace().filter_map(Scope::parse) {
            set.insert(scope);
        }
        set
    }

    /// Parses a list of scope names, rejecting one that is not in `allowed` by name.
    pub fn parse_strict<'a>(
        names: impl IntoIterator<Item = &'a str>,
        allowed: &[Scope],
    ) -> Result<ScopeSet, String> {
        let mut set = ScopeSet::default();
        for name in names {
            let scope = Scope::parse(name)
                .filter(|s| allowed.contains(s))
                .ok_or_else(|| {
                    let known: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                    format!("unknown scope {name:?} (allowed: {})", known.join(", "))
                })?;
            set.insert(scope);
        }
        Ok(set)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        Scope::ALL.into_iter().filter(|s| self.contains(*s))
    }

    /// Returns the space-separated form used in the `scope` claim.
    pub fn to_claim(&self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeSet({})", self.to_claim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_round_trip() {
        let set = ScopeSet::parse_strict(["secrets:read", "tasks:write"], &Scope::ALL).unwrap();
        assert_eq!(set.to_claim(), "tasks:write secrets:read");
        assert_eq!(ScopeSet::from_claim(&set.to_claim()), set);
    }

    #[test]
    fn unknown_scope_rejected_by_name() {
        let err = ScopeSet::parse_strict(["secrets:write"], &Scope::ALL).unwrap_err();
        assert!(err.contains("\"secrets:write\""), "{err}");
        let err = ScopeSet::parse_strict(["agent:session"], &Scope::PLATFORM).unwrap_err();
        assert!(err.contains("\"agent:session\""), "{err}");
        assert!(!err.contains("allowed: agent:session"), "{err}");
    }

    #[test]
    fn unknown_scope_in_claim_ignored() {
        let set = ScopeSet::from_claim("future:thing secrets:read");
        assert!(set.contains(Scope::SecretsRead));
        assert!(!set.contains(Scope::SecretsAdmin));
    }
}
