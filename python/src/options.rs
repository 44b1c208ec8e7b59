//! `load_env`'s keyword arguments (as the Python layer passes them, a dict) → [`LoadOptions`].
//! Unknown keys and values of the wrong type are refused with a message naming them.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use rayfine::{EnvType, LoadOptions, Mode, Source};

/// The keys `load_env` understands.
const KEYS: &[&str] = &[
    "image", "path", "url", "mode", "env_vars", "name", "env_type", "mem_limit", "cpu_limit", "startup_timeout", "call_timeout", "token", "keep",
    "lease", "server_program", "hosts",
];

pub fn load_options(given: &Bound<'_, PyDict>) -> PyResult<LoadOptions> {
    for key in given.keys() {
        let key: String = key.extract()?;
        if !KEYS.contains(&key.as_str()) {
            return Err(PyTypeError::new_err(format!("load_env() got an unexpected keyword argument {key:?}")));
        }
    }
    let get = |key: &str| -> PyResult<Option<Bound<'_, PyAny>>> { Ok(given.get_item(key)?.filter(|v| !v.is_none())) };
    let text = |key: &str| -> PyResult<Option<String>> { get(key)?.map(|v| v.extract::<String>().map_err(|_| wrong(key, "a string"))).transpose() };
    let seconds = |key: &str| -> PyResult<Option<Duration>> {
        get(key)?
            .map(|v| {
                let s: f64 = v.extract().map_err(|_| wrong(key, "a number of seconds"))?;
                if s.is_finite() && s > 0.0 && s < 1e9 {
                    Ok(Duration::from_secs_f64(s))
                } else {
                    Err(PyValueError::new_err(format!("{key} must be a positive number of seconds, not {s}")))
                }
            })
            .transpose()
    };
    let sources = [("image", text("image")?), ("path", text("path")?), ("url", text("url")?)];
    let mut named = sources.iter().filter(|(_, v)| v.is_some());
    let source = match (named.next(), named.next()) {
        (Some(("image", Some(image))), None) => Source::Image(image.clone()),
        (Some(("path", Some(path))), None) => Source::Folder(path.into()),
        (Some(("url", Some(url))), None) => Source::Url(url.trim_end_matches('/').to_string()),
        (None, _) => return Err(PyValueError::new_err("load_env needs an image, a path= (environment folder) or a url=")),
        _ => return Err(PyValueError::new_err("load_env takes one of image, path= and url=, not several")),
    };
    let mut options = LoadOptions::new(source);
    match text("mode")?.as_deref() {
        None | Some("auto") | Some("docker") => {}
        Some("process") | Some("local") => options = options.mode(Mode::Process),
        Some("swarm") => options = options.mode(Mode::Swarm),
        Some(other) => return Err(PyValueError::new_err(format!("mode must be \"auto\", \"process\", \"docker\" or \"swarm\", not {other:?}"))),
    }
    if let Some(vars) = get("env_vars")? {
        let vars = vars.cast::<PyDict>().map_err(|_| wrong("env_vars", "a dict of str to str"))?;
        for (key, value) in vars.iter() {
            let key = key.cast::<PyString>().map_err(|_| wrong("env_vars", "a dict of str to str"))?.to_cow()?.into_owned();
            let value = value.str()?.to_cow()?.into_owned();
            options = options.env_var(key, value);
        }
    }
    if let Some(name) = text("name")? {
        options = options.name(name);
    }
    if let Some(env_type) = text("env_type")? {
        let env_type: EnvType = env_type.parse().map_err(|err: rayfine::Error| PyValueError::new_err(err.to_string()))?;
        options = options.env_type(env_type);
    }
    if let Some(limit) = get("mem_limit")? {
        options = options.memory_limit(memory_bytes(&limit)?);
    }
    if let Some(cpus) = get("cpu_limit")? {
        options = options.cpu_limit(cpus.extract().map_err(|_| wrong("cpu_limit", "a number of CPUs"))?);
    }
    if let Some(timeout) = seconds("startup_timeout")? {
        options = options.startup_timeout(timeout);
    }
    if let Some(timeout) = seconds("call_timeout")? {
        options = options.call_timeout(timeout);
    }
    if let Some(token) = text("token")? {
        options = options.token(token);
    }
    if let Some(keep) = get("keep")? {
        options = options.keep(keep.extract().map_err(|_| wrong("keep", "a bool"))?);
    }
    // `lease=None` (or 0) means no lease; absent means the default.
    match given.get_item("lease")? {
        None => {}
        Some(v) if v.is_none() => options = options.no_lease(),
        Some(v) => {
            let s: f64 = v.extract().map_err(|_| wrong("lease", "a number of seconds, or None"))?;
            options = match s {
                0.0 => options.no_lease(),
                s if s.is_finite() && s > 0.0 && s < 1e9 => options.lease(Duration::from_secs_f64(s)),
                s => return Err(PyValueError::new_err(format!("lease must be a positive number of seconds, 0 or None, not {s}"))),
            };
        }
    }
    if let Some(program) = text("server_program")? {
        options = options.server_program(program);
    }
    // Docker engines: a list of names, or one string of them separated by commas.
    if let Some(hosts) = get("hosts")? {
        let names: Vec<String> = match hosts.extract::<String>() {
            Ok(list) => vec![list],
            Err(_) => hosts.extract().map_err(|_| wrong("hosts", "a list of engine names (\"local\", \"tcp://host:port\", \"ssh://user@host\", ...)"))?,
        };
        let mut parsed = Vec::new();
        for name in &names {
            parsed.extend(rayfine::DockerHost::parse_list(name).map_err(|err| PyValueError::new_err(err.to_string()))?);
        }
        if parsed.is_empty() {
            return Err(PyValueError::new_err("hosts names no engine"));
        }
        options = options.hosts(parsed);
    }
    Ok(options)
}

/// `mem_limit` as bytes: an int, or a string like Docker's (`"512m"`, `"2g"`, `"100000k"`).
fn memory_bytes(value: &Bound<'_, PyAny>) -> PyResult<i64> {
    if let Ok(bytes) = value.extract::<i64>() {
        return Ok(bytes);
    }
    let text: String = value.extract().map_err(|_| wrong("mem_limit", "bytes (an int) or a size like \"512m\""))?;
    let lower = text.trim().to_ascii_lowercase();
    let (number, unit) = lower.split_at(lower.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(lower.len()));
    let factor: f64 = match unit.trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(PyValueError::new_err(format!("mem_limit {text:?}: the unit must be b, k, m or g"))),
    };
    let number: f64 = number.parse().map_err(|_| PyValueError::new_err(format!("mem_limit {text:?} is not a size like \"512m\"")))?;
    Ok((number * factor) as i64)
}

fn wrong(key: &str, expected: &str) -> PyErr {
    PyTypeError::new_err(format!("{key} must be {expected}"))
}
