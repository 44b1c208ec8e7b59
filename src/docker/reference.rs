//! Image references checked before anything is built, with a message that says what is wrong.

use crate::error::{Error, Result};

/// Checks an image reference the way the engine will (`name[:tag]`, lowercase name), so a bad
/// one fails before anything is built and with a message that says what is wrong.
pub(crate) fn validate_reference(reference: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidInput(format!("`{reference}` is not a valid image tag: {why}")));
    if reference.is_empty() {
        return bad("it is empty");
    }
    if reference.contains('@') {
        return bad("a digest cannot be built; use name:tag");
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match reference[last_slash..].rfind(':') {
        Some(colon) => (&reference[..last_slash + colon], Some(&reference[last_slash + colon + 1..])),
        None => (reference, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return bad("the tag after `:` may hold letters, digits, `_`, `.` and `-` (not first), at most 128");
        }
    }
    // The first component may be a registry host (with a port); the rest are path components.
    for (index, component) in name.split('/').enumerate() {
        let is_host = index == 0 && name.contains('/') && (component.contains('.') || component.contains(':') || component == "localhost");
        if is_host {
            continue;
        }
        let valid = !component.is_empty()
            && component.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return bad("names are lowercase letters, digits and `.`, `_`, `-` separators, e.g. `my-env:v1`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for good in ["echo", "echo:v1", "rayfine-test/python:bookworm", "localhost:5000/a/b:c-1", "a.b_c-d:1.0"] {
            assert!(validate_reference(good).is_ok(), "{good}");
        }
        for bad in ["", "Echo", "echo:", "echo:-x", "a//b", "echo@sha256:00", "-a", "a:b:c!", "echo:has space"] {
            assert!(validate_reference(bad).is_err(), "{bad}");
        }
    }
}
