//! Rust errors become the exceptions of `rayfine.errors`, one Python class per kind, with the
//! structured fields (remote type and traceback, last log lines, ...) as attributes.
//!
//! The classes are defined in Python, so that `CallTimeout` can also be a `TimeoutError` and
//! `ConnectionError` a builtin `ConnectionError`: multiple inheritance that Rust-made exception
//! types cannot have.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The Python exception for `err`.
pub fn to_py_err(py: Python<'_>, err: rayfine::Error) -> PyErr {
    match build(py, err) {
        Ok(exception) => exception,
        Err(failed) => failed,
    }
}

fn build(py: Python<'_>, err: rayfine::Error) -> PyResult<PyErr> {
    use rayfine::Error as E;
    let message = err.to_string();
    let attrs = PyDict::new(py);
    let class = match err {
        E::Raised { method, kind, message: remote_message, traceback } => {
            attrs.set_item("method", method)?;
            attrs.set_item("remote_type", kind)?;
            attrs.set_item("remote_message", remote_message)?;
            attrs.set_item("remote_traceback", traceback)?;
            "RemoteError"
        }
        E::MethodNotFound { method, .. } => {
            attrs.set_item("method", method)?;
            "MethodNotFound"
        }
        E::InvalidArguments { method, .. } => {
            attrs.set_item("method", method)?;
            "InvalidArguments"
        }
        E::NotSerializable { method, .. } => {
            attrs.set_item("method", method)?;
            "ResultNotSerializable"
        }
        E::Timeout { method, .. } => {
            attrs.set_item("method", method)?;
            "CallTimeout"
        }
        E::NotReady { .. } => "NotReady",
        E::Connection { url, .. } | E::Unauthorized { url } | E::Protocol { url, .. } => {
            attrs.set_item("url", url)?;
            "ConnectionError"
        }
        E::StartFailed { name, logs, .. } => {
            attrs.set_item("name", name)?;
            attrs.set_item("logs", logs)?;
            "StartFailed"
        }
        E::Stopped { name, logs, .. } => {
            attrs.set_item("name", name)?;
            attrs.set_item("logs", logs)?;
            "EnvironmentStopped"
        }
        E::Closed(name) => {
            attrs.set_item("name", name)?;
            attrs.set_item("logs", Vec::<String>::new())?;
            "EnvironmentStopped"
        }
        E::InvalidInput(_) => "InvalidInput",
        E::Build { tag, step, .. } => {
            attrs.set_item("tag", tag)?;
            attrs.set_item("step", step)?;
            "BuildFailed"
        }
        E::Engine(_) | E::ContainerRemains { .. } => "DockerError",
        _ => "RayfineError",
    };
    let module = py.import("rayfine.errors")?;
    let exception = module.getattr(class)?.call1((message,))?;
    for (key, value) in attrs.iter() {
        exception.setattr(key.cast::<pyo3::types::PyString>()?.to_cow()?.as_ref(), value)?;
    }
    Ok(PyErr::from_value(exception))
}
