//! [`EnvDetector`]: is an environment folder function-based (Rayfine's server calls its env.py)
//! or HTTP-based (it brings its own web server)?
//!
//! The answer comes from the structure of the code, not from substrings: env.py is tokenized
//! (comments and strings are opaque) and a web app counts only when a framework's app class,
//! imported from that framework, is called. A variable that happens to be named `app` means
//! nothing. The Dockerfile counts when its start command runs a known web server.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

mod dockerfile;
mod pylex;

use crate::error::{Error, Result};
use pylex::{logical_lines, Line, Token};

/// The port an HTTP-based environment is assumed to listen on when its Dockerfile says nothing.
pub const DEFAULT_HTTP_PORT: u16 = 8000;

/// Web app classes, by the module path they are imported from.
const APP_CLASSES: &[&str] = &[
    "fastapi.FastAPI",
    "flask.Flask",
    "starlette.applications.Starlette",
    "aiohttp.web.Application",
    "quart.Quart",
    "sanic.Sanic",
    "litestar.Litestar",
];

/// Programs whose start makes an image HTTP-based.
const SERVER_PROGRAMS: &[&str] = &["uvicorn", "gunicorn", "hypercorn", "flask", "daphne", "granian", "fastapi", "waitress-serve"];

/// How an environment is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvType {
    /// env.py defines `Actor` or public functions; Rayfine injects its `/call` server.
    Function,
    /// The environment is a web server of its own; calls are `POST /{method}`.
    Http,
}

impl EnvType {
    /// The label value: `function` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvType::Function => "function",
            EnvType::Http => "http",
        }
    }
}

impl fmt::Display for EnvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnvType {
    type Err = Error;
    fn from_str(text: &str) -> Result<EnvType> {
        match text {
            "function" | "function-based" | "functions" => Ok(EnvType::Function),
            "http" | "http-based" => Ok(EnvType::Http),
            other => Err(Error::InvalidInput(format!("`{other}` is not an environment type: use `function` or `http`"))),
        }
    }
}

/// What the detector found, and why: the reason is shown by `rayfine build`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The classification.
    pub env_type: EnvType,
    /// One line saying what decided it.
    pub reason: String,
    /// For HTTP-based environments: the port the server listens on inside the container.
    pub http_port: Option<u16>,
}

/// Classifies environment folders.
#[derive(Debug, Clone, Default)]
pub struct EnvDetector {
    override_type: Option<EnvType>,
    dockerfile: Option<PathBuf>,
}

impl EnvDetector {
    /// A detector that looks at the folder.
    pub fn new() -> EnvDetector {
        EnvDetector::default()
    }

    /// A detector whose answer is `env_type`, whatever the folder holds (explicit wins).
    pub fn with_override(env_type: Option<EnvType>) -> EnvDetector {
        EnvDetector { override_type: env_type, dockerfile: None }
    }

    /// Reads this Dockerfile instead of the folder's top-level one (see [`dockerfile_path`]).
    pub fn dockerfile(mut self, path: impl Into<PathBuf>) -> EnvDetector {
        self.dockerfile = Some(path.into());
        self
    }

    /// Classifies `folder`.
    pub fn detect(&self, folder: &Path) -> Result<Detection> {
        if !folder.is_dir() {
            return Err(Error::InvalidInput(format!("environment folder `{}` does not exist", folder.display())));
        }
        let env_py = folder.join("env.py");
        let dockerfile_path = dockerfile_path(folder, self.dockerfile.as_deref())?;
        let source = read_optional(&env_py)?;
        let docker_text = read_optional(&dockerfile_path)?;
        let instructions = docker_text.as_deref().map(dockerfile::instructions).unwrap_or_default();
        let start = dockerfile::start_command(&instructions);
        let port_from_docker = dockerfile::exposed_port(&instructions).or_else(|| port_in_command(&start));
        let http_port = Some(port_from_docker.unwrap_or(DEFAULT_HTTP_PORT));

        if let Some(env_type) = self.override_type {
            let http_port = (env_type == EnvType::Http).then_some(http_port).flatten();
            return Ok(Detection { env_type, reason: "given explicitly".into(), http_port });
        }
        let structure = source.as_deref().map(PythonStructure::read);
        if let Some(app) = structure.as_ref().and_then(|s| s.web_app.clone()) {
            return Ok(Detection { env_type: EnvType::Http, reason: format!("env.py creates a web app ({app})"), http_port });
        }
        if let Some(program) = web_server_program(&start) {
            return Ok(Detection { env_type: EnvType::Http, reason: format!("the Dockerfile starts {program}"), http_port });
        }
        if let Some(structure) = &structure {
            if structure.has_actor {
                return Ok(Detection { env_type: EnvType::Function, reason: "env.py defines class Actor".into(), http_port: None });
            }
            if let Some(first) = structure.functions.first() {
                let reason = format!("env.py defines public functions ({first}{})", if structure.functions.len() > 1 { ", ..." } else { "" });
                return Ok(Detection { env_type: EnvType::Function, reason, http_port: None });
            }
        }
        Err(Error::InvalidInput(format!(
            "cannot tell how to serve `{}`: looked for `class Actor`, public top-level functions or a web app \
             (FastAPI, Flask, Starlette, aiohttp, ...) in {} and a web server (uvicorn, gunicorn, ...) started by the CMD or \
             ENTRYPOINT of {}, and found none; pass the type explicitly (--env-type) if this is wrong",
            folder.display(),
            describe(&env_py, source.is_some()),
            describe(&dockerfile_path, docker_text.is_some()),
        )))
    }
}

/// The Dockerfile of a build: the folder's top-level `Dockerfile`, or the one named (`-f`). A
/// relative name is looked for in the current folder, as the Docker CLI does, and in the
/// environment folder (OpenEnv keeps its Dockerfile in `server/Dockerfile`); when both hold a
/// different file of that name, the choice is the user's, and the error names both. A named file
/// must exist.
pub fn dockerfile_path(folder: &Path, named: Option<&Path>) -> Result<PathBuf> {
    if !folder.is_dir() {
        return Err(Error::InvalidInput(format!("environment folder `{}` does not exist", folder.display())));
    }
    let Some(named) = named else { return Ok(folder.join("Dockerfile")) };
    let candidates = if named.is_absolute() { vec![named.to_path_buf()] } else { vec![named.to_path_buf(), folder.join(named)] };
    let mut found: Vec<&PathBuf> = candidates.iter().filter(|path| path.is_file()).collect();
    found.dedup_by(|a, b| std::fs::canonicalize(a.as_path()).ok() == std::fs::canonicalize(b.as_path()).ok());
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [here, there] => Err(Error::InvalidInput(format!(
            "`{}` names two Dockerfiles: `{}` (from the current folder) and `{}` (in the environment folder); name one by a path that only it has",
            named.display(),
            here.display(),
            there.display()
        ))),
        _ => {
            let tried: Vec<String> = candidates.iter().map(|p| format!("`{}`", p.display())).collect();
            let what = if candidates.iter().any(|p| p.is_dir()) { "is a folder, not a file" } else { "does not exist" };
            Err(Error::InvalidInput(format!("the Dockerfile `{}` {what} (looked for {})", named.display(), tried.join(" and "))))
        }
    }
}

fn describe(path: &Path, exists: bool) -> String {
    if exists {
        format!("`{}`", path.display())
    } else {
        format!("`{}` (missing)", path.display())
    }
}

fn read_optional(path: &PathBuf) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { context: format!("cannot read {}", path.display()), source }),
    }
}

/// The web server program a start command runs, if any: the program itself (`uvicorn ...`), or
/// a module run by Python (`python -m uvicorn ...`).
fn web_server_program(words: &[String]) -> Option<String> {
    let mut words = words.iter().map(String::as_str).peekable();
    // Shell wrappers: `sh -c "uvicorn ..."` has the server in one word.
    let mut candidates: Vec<&str> = Vec::new();
    while let Some(word) = words.next() {
        let program = word.rsplit('/').next().unwrap_or(word);
        if program.starts_with("python") && words.peek() == Some(&"-m") {
            words.next();
            candidates.extend(words.next());
            continue;
        }
        candidates.push(program);
        candidates.extend(word.split_whitespace().map(|w| w.rsplit('/').next().unwrap_or(w)));
    }
    candidates.into_iter().find(|c| SERVER_PROGRAMS.contains(c)).map(str::to_string)
}

/// A `--port N`, `--bind host:N` or `-b host:N` in the start command.
fn port_in_command(words: &[String]) -> Option<u16> {
    let mut iter = words.iter().flat_map(|w| w.split_whitespace()).peekable();
    while let Some(word) = iter.next() {
        let value = match word.split_once('=') {
            Some(("--port" | "--bind" | "-b" | "-p", value)) => Some(value.to_string()),
            _ if matches!(word, "--port" | "--bind" | "-b" | "-p") => iter.peek().map(|v| v.to_string()),
            _ => None,
        };
        if let Some(port) = value.and_then(|v| v.rsplit(':').next().and_then(|p| p.parse().ok())) {
            return Some(port);
        }
    }
    None
}

/// What the detector reads from env.py.
#[derive(Debug, Default)]
struct PythonStructure {
    has_actor: bool,
    functions: Vec<String>,
    /// The app class called, e.g. `fastapi.FastAPI`.
    web_app: Option<String>,
}

impl PythonStructure {
    fn read(source: &str) -> PythonStructure {
        let lines = logical_lines(source);
        let mut structure = PythonStructure::default();
        let mut aliases: HashMap<String, String> = HashMap::new();
        for line in &lines {
            read_imports(line, &mut aliases);
        }
        for line in &lines {
            if line.indent == 0 {
                if line.starts_with_names(&["class", "Actor"]) && matches!(line.tokens.get(2), Some(Token::Punct('(' | ':'))) {
                    structure.has_actor = true;
                }
                let def = if line.starts_with_names(&["async", "def"]) { line.tokens.get(2) } else if line.starts_with_names(&["def"]) { line.tokens.get(1) } else { None };
                if let Some(Token::Name(name)) = def {
                    if !name.starts_with('_') {
                        structure.functions.push(name.clone());
                    }
                }
            }
            if structure.web_app.is_none() {
                structure.web_app = app_class_called(line, &aliases);
            }
        }
        structure
    }
}

/// Records what `import a.b as c` and `from a.b import C as D` bind.
fn read_imports(line: &Line, aliases: &mut HashMap<String, String>) {
    let tokens = &line.tokens;
    if line.starts_with_names(&["import"]) {
        for (dotted, alias) in import_list(&tokens[1..]) {
            let bound = alias.unwrap_or_else(|| dotted.split('.').next().unwrap_or_default().to_string());
            let target = if dotted.contains('.') && bound == dotted.split('.').next().unwrap_or_default() {
                bound.clone()
            } else {
                dotted.clone()
            };
            aliases.insert(bound, target);
        }
    } else if line.starts_with_names(&["from"]) {
        let Some(import_at) = tokens.iter().position(|t| matches!(t, Token::Name(n) if n == "import")) else { return };
        let module = dotted_name(&tokens[1..import_at]);
        for (name, alias) in import_list(&tokens[import_at + 1..]) {
            let bound = alias.unwrap_or_else(|| name.clone());
            aliases.insert(bound, format!("{module}.{name}"));
        }
    }
}

/// `a.b as c, d` → [("a.b", Some("c")), ("d", None)]; parentheses are ignored.
fn import_list(tokens: &[Token]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for part in tokens.split(|t| *t == Token::Punct(',')) {
        let part: Vec<&Token> = part.iter().filter(|t| !matches!(t, Token::Punct('(' | ')'))).collect();
        let as_at = part.iter().position(|t| matches!(t, Token::Name(n) if n == "as"));
        let (name_tokens, alias) = match as_at {
            Some(p) => (&part[..p], part.get(p + 1).and_then(|t| if let Token::Name(n) = t { Some(n.clone()) } else { None })),
            None => (&part[..], None),
        };
        let name: String = name_tokens.iter().map(|t| match t { Token::Name(n) => n.as_str(), Token::Punct('.') => ".", _ => "" }).collect();
        if !name.is_empty() {
            out.push((name, alias));
        }
    }
    out
}

fn dotted_name(tokens: &[Token]) -> String {
    tokens.iter().map(|t| match t { Token::Name(n) => n.as_str(), Token::Punct('.') => ".", _ => "" }).collect()
}

/// The web app class a line calls, resolved through the imports: `FastAPI(` after
/// `from fastapi import FastAPI`, `web.Application(` after `from aiohttp import web`.
fn app_class_called(line: &Line, aliases: &HashMap<String, String>) -> Option<String> {
    let tokens = &line.tokens;
    let mut i = 0;
    while i < tokens.len() {
        let preceded_by_dot = i > 0 && tokens[i - 1] == Token::Punct('.');
        if let (Token::Name(first), false) = (&tokens[i], preceded_by_dot) {
            let mut path = vec![first.as_str()];
            let mut j = i + 1;
            while j + 1 < tokens.len() && tokens[j] == Token::Punct('.') {
                let Token::Name(next) = &tokens[j + 1] else { break };
                path.push(next);
                j += 2;
            }
            if tokens.get(j) == Some(&Token::Punct('(')) {
                if let Some(resolved) = aliases.get(path[0]) {
                    let full = std::iter::once(resolved.as_str()).chain(path[1..].iter().copied()).collect::<Vec<_>>().join(".");
                    if APP_CLASSES.contains(&full.as_str()) {
                        return Some(full);
                    }
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structure(source: &str) -> PythonStructure {
        PythonStructure::read(source)
    }

    #[test]
    fn actor_and_functions() {
        let s = structure("import os\nclass Actor:\n    def evaluate(self): pass\n\ndef _private(): pass\nasync def ping(): pass\n");
        assert!(s.has_actor);
        assert_eq!(s.functions, ["ping"]);
        assert_eq!(s.web_app, None);
    }

    #[test]
    fn web_apps_through_every_import_style() {
        for source in [
            "from fastapi import FastAPI\napp = FastAPI()\n",
            "import fastapi\nserver = fastapi.FastAPI(title='x')\n",
            "from fastapi import FastAPI as F\napi = F()\n",
            "from flask import Flask\napp = Flask(__name__)\n",
            "from aiohttp import web\napp = web.Application()\n",
            "import aiohttp.web\napp = aiohttp.web.Application()\n",
            "from starlette.applications import Starlette\ndef create():\n    return Starlette(routes=[])\n",
        ] {
            assert!(structure(source).web_app.is_some(), "missed: {source}");
        }
    }

    #[test]
    fn not_fooled_by_comments_strings_or_names() {
        for source in [
            "# app = FastAPI()\ndef evaluate(): pass\n",
            "DOC = 'app = Flask(__name__)'\ndef evaluate(): pass\n",
            "\"\"\"Built like a FastAPI app: app = FastAPI()\"\"\"\ndef evaluate(): pass\n",
            "app = make_thing()\ndef evaluate(): return app\n",
            "class FastAPI: pass\napp = FastAPI()\ndef evaluate(): pass\n",
            "import fastapi_utils\napp = fastapi_utils.FastAPI()\ndef evaluate(): pass\n",
        ] {
            let s = structure(source);
            assert_eq!(s.web_app, None, "fooled by: {source}");
            assert!(!s.functions.is_empty());
        }
    }

    #[test]
    fn example_and_fixture_folders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let detect = |folder: &str| EnvDetector::new().detect(&root.join(folder));
        for (folder, expected) in [
            ("environments/echo", EnvType::Function),
            ("environments/counter", EnvType::Function),
            ("environments/gridgame", EnvType::Function),
            ("environments/scorer_http", EnvType::Http),
            ("tests/fixtures/no_dockerfile", EnvType::Function),
        ] {
            assert_eq!(detect(folder).unwrap().env_type, expected, "{folder}");
        }
        assert_eq!(detect("environments/scorer_http").unwrap().http_port, Some(8000));
        let explicit = EnvDetector::with_override(Some(EnvType::Http)).detect(&root.join("environments/echo")).unwrap();
        assert_eq!(explicit.env_type, EnvType::Http);

        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("env.py"), "# def evaluate(): pass\nCONSTANT = 1\n").unwrap();
        let message = EnvDetector::new().detect(empty.path()).unwrap_err().to_string();
        assert!(message.contains("class Actor") && message.contains("env.py") && message.contains("(missing)"), "{message}");
        assert!(EnvDetector::new().detect(Path::new("/no/such/folder")).unwrap_err().to_string().contains("does not exist"));
    }

    #[test]
    fn a_dockerfile_named_anywhere_in_the_folder_decides_openenvs_layout() {
        let openenv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openenv_native");
        let message = EnvDetector::new().detect(&openenv).unwrap_err().to_string();
        assert!(message.contains("Dockerfile` (missing)"), "without -f its top level has none: {message}");
        let found = EnvDetector::new().dockerfile("server/Dockerfile").detect(&openenv).unwrap();
        assert_eq!((found.env_type, found.http_port), (EnvType::Http, Some(8000)));
        assert!(found.reason.contains("uvicorn"), "{}", found.reason);
        let absolute = openenv.join("server/Dockerfile");
        assert_eq!(dockerfile_path(&openenv, Some(&absolute)).unwrap(), absolute);
        assert_eq!(dockerfile_path(&openenv, None).unwrap(), openenv.join("Dockerfile"));
        let missing = dockerfile_path(&openenv, Some(Path::new("nope/Dockerfile"))).unwrap_err().to_string();
        assert!(missing.contains("`nope/Dockerfile` does not exist") && missing.contains("openenv_native/nope/Dockerfile"), "{missing}");
        let folder = dockerfile_path(&openenv, Some(Path::new("server"))).unwrap_err().to_string();
        assert!(folder.contains("is a folder"), "{folder}");
        assert!(dockerfile_path(Path::new("/no/such/env"), None).unwrap_err().to_string().contains("folder `/no/such/env` does not exist"));
        // A relative name that both the current folder (the crate's, in tests) and the
        // environment folder hold names two files: refused, naming both.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("Cargo.toml"), "FROM x\n").unwrap();
        let two = dockerfile_path(other.path(), Some(Path::new("Cargo.toml"))).unwrap_err().to_string();
        assert!(two.contains("names two Dockerfiles") && two.contains(&other.path().join("Cargo.toml").display().to_string()), "{two}");
        // The same file reached both ways is one.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(dockerfile_path(root, Some(Path::new("Cargo.toml"))).unwrap(), Path::new("Cargo.toml"));
    }

    #[test]
    fn server_programs_in_start_commands() {
        let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(web_server_program(&words(&["uvicorn", "app:app"])), Some("uvicorn".into()));
        assert_eq!(web_server_program(&words(&["/usr/bin/python3", "-m", "gunicorn", "-b", ":80"])), Some("gunicorn".into()));
        assert_eq!(web_server_program(&words(&["sh", "-c", "exec hypercorn app:app"])), Some("hypercorn".into()));
        assert_eq!(web_server_program(&words(&["python3", "train.py", "--uvicorn-like"])), None);
        assert_eq!(port_in_command(&words(&["uvicorn", "app:app", "--port", "9000"])), Some(9000));
        assert_eq!(port_in_command(&words(&["gunicorn", "-b", "0.0.0.0:7000"])), Some(7000));
        assert_eq!(port_in_command(&words(&["uvicorn", "--port=81"])), Some(81));
    }
}
