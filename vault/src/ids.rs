//! Validated identifiers: account and project ids, secret and definition names.

use std::fmt;

use crate::error::VaultError;

/// The rule for account and project ids, quoted in error messages.
pub(crate) const ID_RULE: &str =
    "1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit";

/// The rule for secret and definition names, quoted in error messages.
pub(crate) const SECRET_NAME_RULE: &str =
    "1 to 256 bytes of UTF-8 without control characters U+0000 to U+001F and U+007F";

/// Maximum length of an account or project id, in characters (all ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Maximum length of a secret or definition name, in bytes of UTF-8.
pub const MAX_SECRET_NAME_BYTES: usize = 256;

/// A project of an account: the scope of secrets, definitions and data keys.
///
/// [`ProjectRef::new`] validates both ids. The fields are public, so a value
/// built directly is unchecked. Every [`crate::Vault`] method therefore
/// validates its `ProjectRef` again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProjectRef {
    pub account: String,
    pub project: String,
}

impl ProjectRef {
    /// Builds a project reference after validating both ids.
    pub fn new(account: &str, project: &str) -> Result<Self, VaultError> {
        let project_ref = ProjectRef {
            account: account.to_owned(),
            project: project.to_owned(),
        };
        project_ref.validate()?;
        Ok(project_ref)
    }

    /// Checks both ids against the rules of [`validate_account_id`] and
    /// [`validate_project_id`].
    pub fn validate(&self) -> Result<(), VaultError> {
        validate_account_id(&self.account)?;
        validate_project_id(&self.project)
    }
}

impl fmt::Display for ProjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account, self.project)
    }
}

/// Validates an account id.
///
/// An account id is 1 to 64 characters long. Each character is a lowercase
/// ASCII letter `a`-`z`, a digit `0`-`9`, `_` or `-`, and the first character
/// is a letter or a digit.
pub fn validate_account_id(s: &str) -> Result<(), VaultError> {
    check_id(s).map_err(|reason| VaultError::InvalidAccount {
        value: s.to_owned(),
        reason,
    })
}

/// Validates a project id. The rule is the same as for account ids: 1 to 64
/// characters of `a`-`z`, `0`-`9`, `_` and `-`, starting with a letter or digit.
pub fn validate_project_id(s: &str) -> Result<(), VaultError> {
    check_id(s).map_err(|reason| VaultError::InvalidProject {
        value: s.to_owned(),
        reason,
    })
}

/// Validates a secret name. Definition names follow the same rule.
///
/// A name is 1 to 256 bytes of UTF-8 and contains no control character
/// (U+0000 to U+001F, and U+007F). Every other character is allowed, including
/// `/`, spaces, `%`, `.` and non-ASCII letters, and the name is stored exactly
/// as given: names are case-sensitive, and no Unicode normalization or trimming
/// takes place, so `"db"` and `"db "` are two different names.
pub fn validate_secret_name(s: &str) -> Result<(), VaultError> {
    let invalid = |reason: String| VaultError::InvalidName {
        value: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if s.len() > MAX_SECRET_NAME_BYTES {
        return Err(invalid(format!("the name is {} bytes long", s.len())));
    }
    if s.chars().any(is_forbidden_control) {
        return Err(invalid("control characters are not allowed".to_owned()));
    }
    Ok(())
}

fn is_forbidden_control(c: char) -> bool {
    c <= '\u{1f}' || c == '\u{7f}'
}

/// Returns the reason `s` breaks [`ID_RULE`], if it does.
fn check_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the id is empty".to_owned());
    }
    let length = s.chars().count();
    if length > MAX_ID_LEN {
        return Err(format!("the id is {length} characters long"));
    }
    for (position, c) in s.chars().enumerate() {
        let allowed = c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if !allowed {
            return Err(format!(
                "character {c:?} at position {position} is not allowed"
            ));
        }
    }
    if s.starts_with(['_', '-']) {
        return Err("the first character must be a letter or digit".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
