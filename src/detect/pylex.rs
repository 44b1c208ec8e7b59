//! Just enough of a Python tokenizer to read an env.py's structure without running it: names,
//! punctuation and logical lines, with comments dropped and every string literal reduced to one
//! opaque token. That is what keeps the detector from being fooled by `# app = FastAPI()` or by
//! a docstring that mentions Flask. Running the file instead would need the environment's
//! dependencies on the host, which is exactly what images are for.

/// One token of a logical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// An identifier or keyword.
    Name(String),
    /// A string or bytes literal, whatever its content.
    Str,
    /// A number literal.
    Number,
    /// Any other single character: `(`, `.`, `=`, `:`, ...
    Punct(char),
}

/// A logical line: its indentation (in columns) and tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub indent: usize,
    pub tokens: Vec<Token>,
}

impl Line {
    /// The names of the line, in order, as `&str`, for pattern matching.
    pub fn starts_with_names(&self, names: &[&str]) -> bool {
        names.len() <= self.tokens.len()
            && names.iter().zip(&self.tokens).all(|(want, token)| matches!(token, Token::Name(n) if n == want))
    }
}

/// Splits Python source into logical lines. Never fails: malformed source (an unterminated
/// string, unbalanced brackets) just ends the last line early, which the detector then reports
/// as "nothing found" rather than guessing.
pub(crate) fn logical_lines(source: &str) -> Vec<Line> {
    let chars: Vec<char> = source.chars().collect();
    let mut lines = Vec::new();
    let mut tokens = Vec::new();
    let mut indent = 0;
    let mut at_line_start = true;
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if at_line_start {
            let mut column = 0;
            while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t' || chars[i] == '\x0c') {
                column = if chars[i] == '\t' { (column / 8 + 1) * 8 } else { column + 1 };
                i += 1;
            }
            indent = column;
            at_line_start = false;
            continue;
        }
        match c {
            '\n' => {
                i += 1;
                if depth == 0 {
                    if !tokens.is_empty() {
                        lines.push(Line { indent, tokens: std::mem::take(&mut tokens) });
                    }
                    at_line_start = true;
                }
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\\' if chars.get(i + 1) == Some(&'\n') => i += 2,
            '\\' if chars.get(i + 1) == Some(&'\r') && chars.get(i + 2) == Some(&'\n') => i += 3,
            '\'' | '"' => {
                i = skip_string(&chars, i);
                tokens.push(Token::Str);
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if i < chars.len() && (chars[i] == '\'' || chars[i] == '"') && is_string_prefix(&word) {
                    i = skip_string(&chars, i);
                    tokens.push(Token::Str);
                } else {
                    tokens.push(Token::Name(word));
                }
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                    i += 1;
                }
                tokens.push(Token::Number);
            }
            c if c.is_whitespace() => i += 1,
            c => {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                tokens.push(Token::Punct(c));
                i += 1;
            }
        }
    }
    if !tokens.is_empty() {
        lines.push(Line { indent, tokens });
    }
    lines
}

fn is_string_prefix(word: &str) -> bool {
    word.len() <= 2 && word.chars().all(|c| matches!(c.to_ascii_lowercase(), 'r' | 'b' | 'u' | 'f'))
}

/// Index just past the string literal whose opening quote is at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let triple = chars.get(start + 1) == Some(&quote) && chars.get(start + 2) == Some(&quote);
    let mut i = if triple { start + 3 } else { start + 1 };
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '\n' if !triple => return i,
            c if c == quote => {
                if !triple {
                    return i + 1;
                }
                if chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote) {
                    return i + 3;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &Line) -> Vec<String> {
        line.tokens
            .iter()
            .map(|t| match t {
                Token::Name(n) => n.clone(),
                Token::Str => "<str>".into(),
                Token::Number => "<num>".into(),
                Token::Punct(c) => c.to_string(),
            })
            .collect()
    }

    #[test]
    fn comments_and_strings_are_opaque() {
        let lines = logical_lines("x = 'app = FastAPI()'  # app = Flask(__name__)\ny = \"\"\"\nclass Actor:\n\"\"\"\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(names(&lines[0]), ["x", "=", "<str>"]);
        assert_eq!(names(&lines[1]), ["y", "=", "<str>"]);
    }

    #[test]
    fn brackets_and_backslashes_join_lines() {
        let lines = logical_lines("app = FastAPI(\n    title='x',\n)\nz = 1 + \\\n  2\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(names(&lines[0]), ["app", "=", "FastAPI", "(", "title", "=", "<str>", ",", ")"]);
        assert_eq!(lines[1].indent, 0);
    }

    #[test]
    fn indentation_and_prefixed_strings() {
        let lines = logical_lines("def f():\n    return rb'\\'' + f\"{x}\"\n\tpass\n");
        assert_eq!(lines[0].indent, 0);
        assert_eq!(lines[1].indent, 4);
        assert_eq!(names(&lines[1]), ["return", "<str>", "+", "<str>"]);
        assert_eq!(lines[2].indent, 8);
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for source in ["'abc", "\"\"\"abc", "f(", "\\", "x = r'", "é = 1"] {
            let _ = logical_lines(source);
        }
    }
}
