//! Build contexts: the environment folder as a tar archive in memory, minus what `.dockerignore`
//! excludes, the way the Docker CLI sends it. Entries are sorted and owned by root so that an
//! unchanged folder gives the same archive, and the engine's layer cache hits on a rebuild.

use std::path::Path;

use crate::error::{Error, Result};

/// One `.dockerignore` rule.
#[derive(Debug, Clone)]
struct Rule {
    /// Path components of the pattern; `**` matches any number of components.
    parts: Vec<String>,
    /// `!pattern`: re-include what an earlier rule excluded.
    negated: bool,
}

/// The rules of a `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub(crate) struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    /// Parses the file's text: one pattern a line, `#` comments, `!` negation.
    pub fn parse(text: &str) -> IgnoreRules {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| {
                let (negated, pattern) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let parts: Vec<String> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").map(str::to_string).collect();
                (!parts.is_empty()).then_some(Rule { parts, negated })
            })
            .collect();
        IgnoreRules { rules }
    }

    /// Whether `path` (relative, `/`-separated) is excluded. As in Docker, a rule that matches a
    /// parent folder matches everything in it, and the last matching rule wins.
    pub fn is_excluded(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut excluded = false;
        for rule in &self.rules {
            let matched = (1..=parts.len()).any(|n| match_parts(&rule.parts, &parts[..n]));
            if matched {
                excluded = !rule.negated;
            }
        }
        excluded
    }
}

/// Matches pattern components against path components, `**` spanning any number of them.
fn match_parts(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| match_parts(rest, &path[skip..])),
        Some((first, rest)) => !path.is_empty() && glob(first, path[0]) && match_parts(rest, &path[1..]),
    }
}

/// Shell-style match of one component: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`, `\` escapes.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|skip| glob_at(&p[1..], &t[skip..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(1).position(|c| *c == ']').map(|i| i + 1) else {
                return t.first() == Some(&'[') && glob_at(&p[1..], &t[1..]);
            };
            let Some(c) = t.first() else { return false };
            let (negate, set) = match p.get(1) {
                Some('!' | '^') => (true, &p[2..close]),
                _ => (false, &p[1..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    hit |= set[i] <= *c && *c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == *c;
                    i += 1;
                }
            }
            hit != negate && glob_at(&p[close + 1..], &t[1..])
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob_at(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob_at(&p[1..], &t[1..]),
    }
}

/// A build context being assembled.
pub(crate) struct ContextArchive {
    builder: tar::Builder<Vec<u8>>,
}

impl ContextArchive {
    pub fn new() -> ContextArchive {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        ContextArchive { builder }
    }

    /// Adds the folder's files under their relative paths, honouring its `.dockerignore`, except
    /// the top-level Dockerfile: the caller adds that (extended with labels, or a default one).
    /// `.dockerignore` itself is always sent, as the Docker CLI does.
    pub fn add_folder(&mut self, folder: &Path) -> Result<()> {
        let ignore = match std::fs::read_to_string(folder.join(".dockerignore")) {
            Ok(text) => IgnoreRules::parse(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => IgnoreRules::default(),
            Err(source) => return Err(io_error(folder.join(".dockerignore").as_path(), source)),
        };
        self.add_dir(folder, "", &ignore)
    }

    fn add_dir(&mut self, root: &Path, relative: &str, ignore: &IgnoreRules) -> Result<()> {
        let dir = root.join(relative);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|source| io_error(&dir, source))?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| io_error(&dir, source))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if relative.is_empty() { name.clone() } else { format!("{relative}/{name}") };
            if relative.is_empty() && name == "Dockerfile" {
                continue;
            }
            let always = relative.is_empty() && name == ".dockerignore";
            if !always && ignore.is_excluded(&path) {
                // A negated rule may re-include something inside an excluded folder; only then
                // is the folder walked.
                if !(entry.path().is_dir() && ignore.rules.iter().any(|r| r.negated)) {
                    continue;
                }
            }
            let file_type = entry.file_type().map_err(|source| io_error(&entry.path(), source))?;
            if file_type.is_dir() {
                if !ignore.is_excluded(&path) {
                    self.append_path(&entry.path(), &path)?;
                }
                self.add_dir(root, &path, ignore)?;
            } else if (file_type.is_file() || file_type.is_symlink()) && (always || !ignore.is_excluded(&path)) {
                self.append_path(&entry.path(), &path)?;
            }
        }
        Ok(())
    }

    fn append_path(&mut self, full: &Path, name: &str) -> Result<()> {
        let metadata = std::fs::symlink_metadata(full).map_err(|source| io_error(full, source))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&metadata);
        header.set_uid(0);
        header.set_gid(0);
        if metadata.is_file() {
            let file = std::fs::File::open(full).map_err(|source| io_error(full, source))?;
            self.builder.append_data(&mut header, name, file).map_err(|source| io_error(full, source))
        } else if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(full).map_err(|source| io_error(full, source))?;
            self.builder.append_link(&mut header, name, target).map_err(|source| io_error(full, source))
        } else {
            header.set_size(0);
            self.builder.append_data(&mut header, name, std::io::empty()).map_err(|source| io_error(full, source))
        }
    }

    /// Adds a file from memory, with the given permission bits.
    pub fn add_bytes(&mut self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        self.builder
            .append_data(&mut header, name, bytes)
            .map_err(|source| Error::Io { context: format!("cannot add {name} to the build context"), source })
    }

    /// The finished archive.
    pub fn finish(self) -> Result<Vec<u8>> {
        self.builder.into_inner().map_err(|source| Error::Io { context: "cannot finish the build context".into(), source })
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io { context: format!("cannot add {} to the build context", path.display()), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_semantics() {
        let rules = IgnoreRules::parse("# comment\n*.pyc\n/data\n**/__pycache__\nsecret*\n!secret.example\nlogs/*.log\n");
        assert!(rules.is_excluded("a.pyc"));
        assert!(!rules.is_excluded("pkg/a.pyc"), "`*.pyc` is anchored at the root, as in Docker");
        assert!(rules.is_excluded("data"));
        assert!(rules.is_excluded("data/big.bin"), "a folder rule covers its contents");
        assert!(rules.is_excluded("pkg/deep/__pycache__/x.pyc"));
        assert!(rules.is_excluded("secret.key"));
        assert!(!rules.is_excluded("secret.example"));
        assert!(rules.is_excluded("logs/run.log"));
        assert!(!rules.is_excluded("logs/keep.txt"));
        assert!(!rules.is_excluded("env.py"));
    }

    #[test]
    fn globs() {
        assert!(glob("a?c", "abc"));
        assert!(glob("[a-c]x", "bx"));
        assert!(!glob("[!a-c]x", "bx"));
        assert!(glob("*.tar.gz", "x.tar.gz"));
        assert!(!glob("*.py", "x.pyc"));
        assert!(glob("\\*", "*"));
    }

    #[test]
    fn archive_honours_dockerignore_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("env.py"), "def f(): pass\n").unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "Dockerfile\ncache\n*.tmp\n").unwrap();
        std::fs::create_dir(dir.path().join("cache")).unwrap();
        std::fs::write(dir.path().join("cache/blob"), "x").unwrap();
        std::fs::write(dir.path().join("junk.tmp"), "x").unwrap();
        let build = || {
            let mut archive = ContextArchive::new();
            archive.add_folder(dir.path()).unwrap();
            archive.add_bytes("Dockerfile", b"FROM x\n", 0o644).unwrap();
            archive.finish().unwrap()
        };
        let bytes = build();
        assert_eq!(bytes, build());
        let mut names: Vec<String> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "env.py"]);
    }
}
