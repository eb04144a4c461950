//! The shape an email address must have to be attached to a guest (`POST /auth/guest`).

/// `name@domain.tld`, at most 254 characters, a local part of 1..=64, no whitespace or control
/// characters. Deliberately loose beyond that: the address is never used to send mail.
#[must_use]
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::valid_email;

    #[test]
    fn emails() {
        assert!(valid_email("a@b.co"));
        assert!(!valid_email("nope"));
        assert!(!valid_email("@b.co"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("a b@c.co"));
        assert!(!valid_email(&format!("{}@b.co", "a".repeat(65))));
    }
}
