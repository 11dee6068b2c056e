//! Text corpora: a UTF-8 file or a directory of them, cut into paragraphs
//! and split by position into training and held-out parts.

use selfsup_core::{Error, Result};
use std::path::{Path, PathBuf};

/// File extensions read from a corpus directory.
pub const EXTENSIONS: [&str; 3] = ["txt", "md", "text"];

/// Paragraphs of a corpus, split by position.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Where it came from.
    pub source: String,
    /// The first paragraphs.
    pub train: Vec<String>,
    /// The last paragraphs (no paragraph is in both parts).
    pub heldout: Vec<String>,
    /// How many of the first `train` paragraphs came from training-only
    /// text ([`Corpus::add_train_only`]).
    pub train_only: usize,
}

impl Corpus {
    /// Puts the paragraphs of `path` (a file or directory, read as
    /// [`load`] reads) before the training part: more text to learn from
    /// that is never held out, so the held-out text and its baselines stay
    /// the corpus's own.
    pub fn add_train_only(&mut self, path: &Path) -> Result<()> {
        let mut extra = read_paragraphs(path)?;
        if extra.is_empty() {
            return Err(Error::format(path, "no paragraphs of text"));
        }
        self.train_only += extra.len();
        extra.append(&mut self.train);
        self.train = extra;
        self.source = format!("{} + {} (training only)", self.source, path.display());
        Ok(())
    }
}

/// The paragraphs of `text`: blocks separated by blank lines (lines inside
/// a block joined by spaces); a text without blank lines has one paragraph
/// per line.
pub fn paragraphs(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    let blocks: Vec<&str> = if text.contains("\n\n") {
        text.split("\n\n").collect()
    } else {
        text.lines().collect()
    };
    blocks
        .iter()
        .map(|b| b.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect()
}

fn files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(Error::invalid(
            "--corpus",
            format!("{} does not exist", path.display()),
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let p = e.map_err(|e| Error::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "no text files found (looked for .{})",
                EXTENSIONS.join(", .")
            ),
        ));
    }
    Ok(out)
}

/// Loads a file or directory (files in sorted path order) and holds out the
/// last `heldout_fraction` of its paragraphs.
pub fn load(path: &Path, heldout_fraction: f64) -> Result<Corpus> {
    if !(0.0..1.0).contains(&heldout_fraction) || heldout_fraction == 0.0 {
        return Err(Error::invalid(
            "--heldout-fraction",
            format!("{heldout_fraction} must lie strictly between 0 and 1"),
        ));
    }
    let mut all = read_paragraphs(path)?;
    if all.len() < 2 {
        return Err(Error::format(
            path,
            format!(
                "{} paragraph(s); need at least 2 (one to train, one held out)",
                all.len()
            ),
        ));
    }
    let n_held = ((all.len() as f64 * heldout_fraction).round() as usize).clamp(1, all.len() - 1);
    let heldout = all.split_off(all.len() - n_held);
    Ok(Corpus {
        source: path.display().to_string(),
        train: all,
        heldout,
        train_only: 0,
    })
}

/// The paragraphs of a file or of a directory's text files (sorted path
/// order); a file that is not UTF-8 text is an error naming it.
fn read_paragraphs(path: &Path) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for f in files(path)? {
        let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::format(
                &f,
                format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        if let Some(at) = text.find('\0') {
            return Err(Error::format(
                &f,
                format!("binary data, not text (a NUL byte at offset {at})"),
            ));
        }
        all.extend(paragraphs(&text));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_by_blank_lines_or_by_line() {
        assert_eq!(
            paragraphs("a b\nc\n\n\nd  e\n"),
            vec!["a b c".to_string(), "d e".to_string()]
        );
        assert_eq!(paragraphs("one\ntwo\n"), vec!["one", "two"]);
        assert_eq!(paragraphs("x\r\ny"), vec!["x", "y"]);
    }

    #[test]
    fn split_by_position_and_bad_input_named() {
        let d = tempfile::tempdir().unwrap();
        let text: String = (0..10).map(|i| format!("paragraph {i}\n")).collect();
        std::fs::write(d.path().join("a.txt"), &text).unwrap();
        let c = load(&d.path().join("a.txt"), 0.2).unwrap();
        assert_eq!(c.train.len(), 8);
        assert_eq!(c.heldout, vec!["paragraph 8", "paragraph 9"]);
        std::fs::write(d.path().join("b.txt"), b"ok\n\xff\xfe\n").unwrap();
        let e = load(d.path(), 0.2).unwrap_err().to_string();
        assert!(e.contains("b.txt") && e.contains("UTF-8"), "{e}");
        let e = load(&d.path().join("none"), 0.2).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(d.path().join("c.bin.txt"), b"text\0\x01\x02").unwrap();
        let e = load(&d.path().join("c.bin.txt"), 0.2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.bin.txt") && e.contains("NUL byte at offset 4"),
            "{e}"
        );
        std::fs::write(d.path().join("b.txt"), "single").unwrap();
        let mut c = load(&d.path().join("a.txt"), 0.2).unwrap();
        c.add_train_only(&d.path().join("b.txt")).unwrap();
        assert_eq!(c.train.len(), 9);
        assert_eq!((c.train[0].as_str(), c.train_only), ("single", 1));
        assert_eq!(c.heldout, vec!["paragraph 8", "paragraph 9"]);
        assert!(c.source.ends_with("b.txt (training only)"), "{}", c.source);
        std::fs::write(d.path().join("e.txt"), "\n\n").unwrap();
        let e = c.add_train_only(&d.path().join("e.txt")).unwrap_err();
        assert!(e.to_string().contains("e.txt"), "{e}");
        let e = load(&d.path().join("b.txt"), 0.2).unwrap_err().to_string();
        assert!(e.contains("need at least 2"), "{e}");
    }
}
