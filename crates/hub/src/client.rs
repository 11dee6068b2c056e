//! The Hub client (hf-hub 1.0, blocking) and the error and repo-name
//! conventions every network call here shares.
//!
//! Configuration comes from the environment as in the Python
//! `huggingface_hub`: `HF_ENDPOINT` (another Hub, or a test server),
//! `HF_TOKEN` or the token file (`$HF_TOKEN_PATH`, `$HF_HOME/token`),
//! `HF_HUB_CACHE` / `HF_HOME` for the download cache. The token is handed to
//! hf-hub and never formatted into a message by this crate.

use hf_hub::{HFClient, HFClientSync, HFError};
use selfsup_core::{Error, Result};

/// A blocking Hub client configured from the environment, with few retries
/// so an unreachable Hub fails in seconds.
pub fn client() -> Result<HFClientSync> {
    HFClient::builder()
        .retry_max_attempts(2)
        .retry_base_delay(std::time::Duration::from_millis(200))
        .build_sync()
        .map_err(|e| Error::invalid("Hub client", redact(&e.to_string())))
}

/// The Hub endpoint in use (for messages).
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// Every token hf-hub may send: `HF_TOKEN`, and the contents of the token
/// files it reads (`$HF_TOKEN_PATH`, `$HF_HOME/token`,
/// `~/.cache/huggingface/token`).
fn known_tokens() -> Vec<String> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    files.extend(var("HF_TOKEN_PATH").map(Into::into));
    files.extend(var("HF_HOME").map(|h| std::path::Path::new(&h).join("token")));
    files.extend(var("HOME").map(|h| std::path::Path::new(&h).join(".cache/huggingface/token")));
    tokens_from(std::env::var("HF_TOKEN").ok(), &files)
}

/// The token in `var` and in each readable file of `files`, trimmed; too
/// short ones (under 4 characters) are left out, as replacing them would
/// mangle messages.
fn tokens_from(var: Option<String>, files: &[std::path::PathBuf]) -> Vec<String> {
    var.into_iter()
        .chain(files.iter().filter_map(|f| std::fs::read_to_string(f).ok()))
        .map(|t| t.trim().to_string())
        .filter(|t| t.len() >= 4)
        .collect()
}

/// Removes every known token from a message, should any layer below ever
/// echo one (an Authorization header in an error, say).
pub fn redact(msg: &str) -> String {
    redact_tokens(msg, &known_tokens())
}

fn redact_tokens(msg: &str, tokens: &[String]) -> String {
    tokens
        .iter()
        .fold(msg.to_string(), |m, t| m.replace(t.as_str(), "<token>"))
}

/// Turns an hf-hub error into one that says what was being done and what
/// to try next.
pub fn hub_error(action: &str, e: HFError) -> Error {
    let hint = match &e {
        HFError::Request { .. } => format!(
            "; the Hub at {} could not be reached — check the network (or HF_ENDPOINT / proxy settings)",
            endpoint()
        ),
        HFError::AuthRequired { .. } | HFError::Forbidden { .. } => {
            "; set HF_TOKEN (or log in so that $HF_HOME/token exists) with a token that may do this"
                .to_string()
        }
        _ => String::new(),
    };
    Error::invalid("Hub", redact(&format!("{action}: {e}{hint}")))
}

/// Splits and checks a repository id: exactly `user/name`, each part made
/// of letters, digits, `-`, `_` and `.`, not starting or ending with `-` or
/// `.`, at most 96 characters.
pub fn parse_repo_id(id: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Err(Error::invalid(
            "--repo",
            format!("`{id}` is not a Hub repository name of the form user/name: {why}"),
        ))
    };
    let mut parts = id.split('/');
    let (Some(user), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return bad("it needs exactly one `/`");
    };
    for part in [user, name] {
        if part.is_empty() || part.len() > 96 {
            return bad("each part must have 1 to 96 characters");
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad("only letters, digits, `-`, `_` and `.` are allowed");
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) || part.contains("..") {
            return bad("a part may not start or end with `-` or `.`, nor contain `..`");
        }
    }
    Ok((user.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_checked() {
        assert_eq!(
            parse_repo_id("alice/rot-convnet_v1.2").unwrap(),
            ("alice".into(), "rot-convnet_v1.2".into())
        );
        for bad in [
            "alice",
            "alice/",
            "/model",
            "a/b/c",
            "alice/my model",
            "alice/-x",
            "alice/x..y",
            "ali ce/x",
        ] {
            let e = parse_repo_id(bad).unwrap_err().to_string();
            assert!(e.contains("user/name") && e.contains(bad), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn a_token_from_a_token_file_is_redacted_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "hf_fileSecret123\n").unwrap();
        let tokens = tokens_from(
            Some("hf_varSecret456".into()),
            &[file, dir.path().join("absent")],
        );
        let msg = "401: Authorization: Bearer hf_fileSecret123 (also hf_varSecret456)";
        let out = redact_tokens(msg, &tokens);
        assert!(!out.contains("Secret"), "{out}");
        assert_eq!(out.matches("<token>").count(), 2);
    }
}
