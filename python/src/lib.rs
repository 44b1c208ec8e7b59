//! `rayfine._rayfine`: the Python face of Rayfine's Rust client.
//!
//! Thin on purpose: it converts arguments, results and errors, and releases the GIL while the
//! Rust client works. Starting, calling, leases and cleanup are the library's; the pure-Python
//! layer (`rayfine/__init__.py`, `rayfine/aio.py`) adds only what is idiomatic Python
//! (`env.evaluate(...)` by `__getattr__`, `with` blocks).
//!
//! Sync calls are made by the calling thread itself (`EnvironmentWrapper::call_blocking`), async
//! ones on Rayfine's tokio runtime, completed on the event loop in batches ([`completions`]). A
//! blocking wait wakes every 50 ms to let Python run its signal handlers, so a Ctrl-C during a
//! long call raises `KeyboardInterrupt` at once, not when the call ends.

mod completions;
mod convert;
mod errors;
mod options;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rayfine::EnvironmentWrapper;
use serde_json::Value;

use convert::to_json;
use errors::to_py_err;

/// How often a blocking wait lets Python handle signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Runs `future` on the runtime with the GIL released, checking for signals meanwhile.
fn wait<T: Send>(py: Python<'_>, future: impl Future<Output = T> + Send) -> PyResult<T> {
    let runtime = pyo3_async_runtimes::tokio::get_runtime();
    let mut future = std::pin::pin!(future);
    loop {
        let slice = py.detach(|| runtime.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut future).await }));
        match slice {
            Ok(value) => return Ok(value),
            // Raises KeyboardInterrupt (or whatever a handler raises); dropping the future
            // abandons the call.
            Err(_) => py.check_signals()?,
        }
    }
}

/// Positional and keyword arguments as JSON, each named in errors.
fn arguments(args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<(Vec<Value>, Value)> {
    let positional = args.iter().enumerate().map(|(i, arg)| to_json(&arg, &format!("positional argument {i}"))).collect::<PyResult<Vec<_>>>()?;
    let mut named = serde_json::Map::new();
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            let json = to_json(&value, &format!("argument '{key}'"))?;
            named.insert(key, json);
        }
    }
    Ok((positional, Value::Object(named)))
}

fn timeout_of(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(pyo3::exceptions::PyValueError::new_err(format!("_timeout must be a positive number of seconds, not {s}"))),
    }
}

/// A loaded environment (the Rust `EnvironmentWrapper`); `rayfine.Environment` wraps it.
#[pyclass(frozen, module = "rayfine._rayfine", name = "Env")]
struct Env {
    inner: EnvironmentWrapper,
}

#[pymethods]
impl Env {
    /// Registry id, unique in this process.
    #[getter]
    fn id(&self) -> &str {
        self.inner.id()
    }

    /// Name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// `"process"`, `"docker"` or `"remote"`.
    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.mode()
    }

    /// Base URL of the server.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    /// `"function"` or `"http"`.
    #[getter]
    fn env_type(&self) -> &'static str {
        self.inner.env_type().as_str()
    }

    /// The engine's container id, in Docker mode.
    #[getter]
    fn container_id(&self) -> Option<&str> {
        self.inner.container_id()
    }

    /// Process id of the local server, in process mode.
    #[getter]
    fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// The bearer token (a secret: never logged, never in `repr`).
    #[getter]
    fn token(&self) -> Option<&str> {
        self.inner.token()
    }

    /// Calls `method` and waits for its result.
    #[pyo3(signature = (method, args, kwargs=None, timeout=None))]
    fn call<'py>(&self, py: Python<'py>, method: &str, args: &Bound<'py, PyTuple>, kwargs: Option<&Bound<'py, PyDict>>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let (positional, named) = arguments(args, kwargs)?;
        let timeout = timeout_of(timeout)?;
        // The calling thread makes the call itself, without the GIL (see
        // `EnvironmentWrapper::call_blocking`); every 50 ms of waiting, the main thread (the one
        // that runs signal handlers) takes the GIL to let Python run them, and a handler's
        // exception (KeyboardInterrupt) ends the wait. Other threads wait without the GIL.
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            self.inner.call_blocking(method, &positional, named, timeout, &mut || {
                // SAFETY: gettid has no preconditions and cannot fail.
                if std::process::id() != unsafe { libc::gettid() } as u32 {
                    return false;
                }
                match Python::attach(|py| py.check_signals()) {
                    Ok(()) => false,
                    Err(err) => {
                        raised = Some(err);
                        true
                    }
                }
            })
        });
        if let Some(err) = raised {
            return Err(err);
        }
        let value = result.map_err(|err| to_py_err(py, err))?;
        convert::to_python(py, &value)
    }

    /// Calls `method`; returns an asyncio future of its result, completed through `completer`
    /// (the running loop's).
    #[pyo3(signature = (completer, method, args, kwargs=None, timeout=None))]
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        completer: &Bound<'py, completions::Completer>,
        method: String,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (positional, named) = arguments(args, kwargs)?;
        let timeout = timeout_of(timeout)?;
        let env = self.inner.clone();
        completions::spawn(py, completer, async move { env.call_with(&method, &positional, named, timeout).await })
    }

    /// The environment's methods: dicts with name, signature, doc, is_async.
    fn list_methods<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let env = self.inner.clone();
        let methods = wait(py, async move { env.list_methods().await })?.map_err(|err| to_py_err(py, err))?;
        convert::to_python(py, &serde_json::to_value(methods).unwrap_or_default())
    }

    /// Awaitable [`Env::list_methods`], completed through `completer` (the running loop's).
    fn list_methods_async<'py>(&self, py: Python<'py>, completer: &Bound<'py, completions::Completer>) -> PyResult<Bound<'py, PyAny>> {
        let env = self.inner.clone();
        completions::spawn(py, completer, async move { env.list_methods().await.map(|methods| serde_json::to_value(methods).unwrap_or_default()) })
    }

    /// Whether the environment answers `/health` with ready.
    fn is_ready(&self, py: Python<'_>) -> PyResult<bool> {
        let env = self.inner.clone();
        wait(py, async move { env.is_ready().await })
    }

    /// Stops the environment and removes it from the registry. Idempotent.
    fn cleanup(&self, py: Python<'_>) -> PyResult<()> {
        let env = self.inner.clone();
        wait(py, async move { env.cleanup().await })?.map_err(|err| to_py_err(py, err))
    }

    /// Awaitable [`Env::cleanup`], completed through `completer`.
    fn cleanup_async<'py>(&self, py: Python<'py>, completer: &Bound<'py, completions::Completer>) -> PyResult<Bound<'py, PyAny>> {
        let env = self.inner.clone();
        completions::spawn(py, completer, async move { env.cleanup().await.map(|()| serde_json::Value::Null) })
    }

    fn __repr__(&self) -> String {
        format!("<Env {} mode={} url={}>", self.inner.name(), self.inner.mode(), self.inner.url())
    }
}

/// Starts (or connects to) an environment and waits until it is ready.
#[pyfunction]
#[pyo3(signature = (options))]
fn load_env(py: Python<'_>, options: &Bound<'_, PyDict>) -> PyResult<Env> {
    let options = options::load_options(options)?;
    let env = wait(py, async move { rayfine::load_env(options).await })?.map_err(|err| to_py_err(py, err))?;
    Ok(Env { inner: env })
}

/// Awaitable [`load_env`], completed through `completer` (the running loop's).
#[pyfunction]
#[pyo3(signature = (options, completer))]
fn load_env_async<'py>(py: Python<'py>, options: &Bound<'py, PyDict>, completer: &Bound<'py, completions::Completer>) -> PyResult<Bound<'py, PyAny>> {
    let options = options::load_options(options)?;
    completions::spawn_with(py, completer, async move {
        let loaded = rayfine::load_env(options).await;
        Box::new(move |py: Python<'_>| match loaded {
            Ok(inner) => Ok(Py::new(py, Env { inner })?.into_any()),
            Err(err) => Err(to_py_err(py, err)),
        }) as completions::Outcome
    })
}

/// Builds an environment folder into an image; returns the tag.
#[pyfunction]
#[pyo3(signature = (env_path, image_tag, nocache=false, quiet=false, buildargs=None, base_image=None, progress=None, dockerfile=None))]
#[allow(clippy::too_many_arguments)]
fn build_image_from_env(
    py: Python<'_>,
    env_path: std::path::PathBuf,
    image_tag: String,
    nocache: bool,
    quiet: bool,
    buildargs: Option<std::collections::BTreeMap<String, String>>,
    base_image: Option<String>,
    progress: Option<Py<PyAny>>,
    dockerfile: Option<std::path::PathBuf>,
) -> PyResult<String> {
    let mut builder = rayfine::ImageBuilder::new().no_cache(nocache).quiet(quiet);
    if let Some(dockerfile) = dockerfile {
        builder = builder.dockerfile(dockerfile);
    }
    for (key, value) in buildargs.unwrap_or_default() {
        builder = builder.build_arg(key, value);
    }
    if let Some(base) = base_image {
        builder = builder.base_image(base);
    }
    // An exception in the progress callback (KeyboardInterrupt from a Ctrl-C that arrived while
    // it ran, or its own bug) stops the build and is raised, as it would be from a Python loop.
    let raised: Arc<parking_lot::Mutex<Option<PyErr>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    if let Some(progress) = progress {
        let (raised, stop) = (raised.clone(), stop.clone());
        builder = builder.on_progress(move |line: &rayfine::build::BuildProgress| {
            if raised.lock().is_some() {
                return; // the build is stopping; the callback raised once already
            }
            completions::attach_unless_exiting(|py| {
                let stage = match line.stage {
                    rayfine::build::BuildStage::Environment => "environment",
                    rayfine::build::BuildStage::Server => "server",
                };
                if let Err(err) = progress.call1(py, (stage, line.line.as_str())) {
                    raised.lock().get_or_insert(err);
                    stop.notify_one();
                }
            });
        });
    }
    let built = wait(py, async move {
        tokio::select! {
            built = builder.build(env_path, &image_tag) => Some(built),
            () = stop.notified() => None,
        }
    })?;
    if let Some(err) = raised.lock().take() {
        return Err(err);
    }
    match built {
        Some(built) => Ok(built.map_err(|err| to_py_err(py, err))?.tag),
        None => Err(pyo3::exceptions::PyRuntimeError::new_err("the build was stopped by its progress callback")),
    }
}

/// Removes an image by tag or id, with its untagged parents that nothing else uses; a missing
/// one is not an error. It waits for the image builds Rayfine runs on this machine, so it never
/// takes a layer one of them is using from the cache (the `docker rmi` command would).
#[pyfunction]
fn remove_image(py: Python<'_>, image: String) -> PyResult<()> {
    wait(py, async move { rayfine::docker::remove_image(&image).await })?.map_err(|err| to_py_err(py, err))
}

/// Every environment this process loaded and has not cleaned up.
#[pyfunction]
fn list_active_environments() -> Vec<Env> {
    rayfine::list_active_environments().into_iter().map(|inner| Env { inner }).collect()
}

/// The environment with this id, or else the only one with this name.
#[pyfunction]
fn get_environment(id_or_name: &str) -> Option<Env> {
    rayfine::get_environment(id_or_name).map(|inner| Env { inner })
}

/// Cleans up every environment, kept ones included; returns how many there were.
#[pyfunction]
fn cleanup_all_environments(py: Python<'_>) -> PyResult<usize> {
    wait(py, rayfine::cleanup_all_environments())
}

/// Ends every environment that is not kept, at once: for `atexit` and signal handlers.
#[pyfunction]
fn end_all_now(py: Python<'_>) {
    py.detach(rayfine::end_all_environments_now);
}

/// Ends the environments on SIGTERM from a thread of Rayfine's, then dies of SIGTERM, in place
/// of whatever handler is installed (the Python layer's fallback). Returns whether it is in place.
#[pyfunction]
fn end_environments_on_sigterm() -> PyResult<bool> {
    rayfine::end_environments_on_sigterm().map_err(|err| pyo3::exceptions::PyOSError::new_err(format!("cannot install Rayfine's SIGTERM handler: {err}")))
}

#[pymodule]
fn _rayfine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Python keeps SIGINT (KeyboardInterrupt) and SIGTERM; `rayfine/__init__.py` ends the
    // environments at exit, and on SIGTERM through `end_environments_on_sigterm`.
    rayfine::leave_signals_to_the_host();
    // The runtime's threads never take SIGINT or SIGTERM: the kernel delivers them to Python's
    // threads, so a main thread in `time.sleep` is interrupted and runs its handler at once.
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if RUNTIME.get().is_none() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("rayfine-tokio")
            .on_thread_start(rayfine::block_termination_signals)
            .build()
            .map_err(|err| pyo3::exceptions::PyOSError::new_err(format!("cannot start Rayfine's runtime: {err}")))?;
        let runtime = RUNTIME.get_or_init(|| runtime);
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime);
    }
    install_embedded_server().map_err(|err| pyo3::exceptions::PyOSError::new_err(format!("cannot install Rayfine's server program in the cache folder: {err}")))?;
    m.add_class::<Env>()?;
    m.add_class::<completions::Completer>()?;
    m.add_function(wrap_pyfunction!(load_env, m)?)?;
    m.add_function(wrap_pyfunction!(load_env_async, m)?)?;
    m.add_function(wrap_pyfunction!(build_image_from_env, m)?)?;
    m.add_function(wrap_pyfunction!(remove_image, m)?)?;
    m.add_function(wrap_pyfunction!(list_active_environments, m)?)?;
    m.add_function(wrap_pyfunction!(get_environment, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup_all_environments, m)?)?;
    m.add_function(wrap_pyfunction!(end_all_now, m)?)?;
    m.add_function(wrap_pyfunction!(end_environments_on_sigterm, m)?)?;
    m.add_function(wrap_pyfunction!(completions::interpreter_exiting, m)?)?;
    Ok(())
}

/// The static server, carried inside the extension (see `build.rs`).
static EMBEDDED_SERVER: &[u8] = include_bytes!(env!("RAYFINE_EMBEDDED_SERVER"));

/// Writes the embedded server to the user's cache folder (once per version) and points
/// `RAYFINE_SERVER_BIN` at it, unless the user already set one.
fn install_embedded_server() -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os("RAYFINE_SERVER_BIN").is_some() {
        return Ok(());
    }
    let user_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("rayfine"));
    // A read-only or missing home (a container running as `nobody`) falls back to the
    // temporary folder rather than failing the import.
    // SAFETY: getuid cannot fail and touches no memory of ours.
    let temporary = std::env::temp_dir().join(format!("rayfine-{}", unsafe { libc::getuid() }));
    let cache = match user_cache.filter(|dir| std::fs::create_dir_all(dir).is_ok()) {
        Some(dir) => dir,
        None => {
            std::fs::create_dir_all(&temporary)?;
            temporary
        }
    };
    let path = cache.join(format!("rayfine-server-{}-{}", env!("CARGO_PKG_VERSION"), env!("RAYFINE_EMBEDDED_SERVER_KEY")));
    if !path.is_file() {
        // Written under a temporary name and renamed, so a concurrent interpreter never runs a
        // half-written file.
        let partial = cache.join(format!(".rayfine-server-{}.partial", std::process::id()));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(EMBEDDED_SERVER)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        drop(file);
        std::fs::rename(&partial, &path)?;
    }
    // SAFETY: set while the module is imported, before any thread of ours reads the environment.
    unsafe { std::env::set_var("RAYFINE_SERVER_BIN", &path) };
    Ok(())
}
