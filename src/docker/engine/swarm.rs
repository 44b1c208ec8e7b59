//! Swarm operations on a manager: services (one per environment), their tasks, the secrets they
//! read, the nodes they run on.

use std::collections::HashMap;

use base64::Engine as _;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum, Limit, LocalNodeState, SecretSpec, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};

use super::{Engine, EngineError, EngineResult};

/// One environment as a Swarm service, in Rayfine's terms.
#[derive(Debug, Clone, Default)]
pub struct ServiceRequest {
    /// The service's name.
    pub name: String,
    /// The image, by id: a task started from an id is never pulled first (an offline swarm's
    /// agent otherwise waits for the registry to time out before it uses the local image).
    pub image_id: String,
    /// `KEY=value` environment entries.
    pub env: Vec<String>,
    /// Labels, on the service and on its tasks' containers.
    pub labels: HashMap<String, String>,
    /// The container port to publish on the node (host mode, on a port the node picks).
    pub port: u16,
    /// A secret to mount at `/run/secrets/{file}`: its id, name and file name.
    pub secret: Option<(String, String, String)>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Most processes and threads.
    pub pids_limit: Option<i64>,
}

/// A service's task, as Rayfine reads it.
#[derive(Debug, Clone, Default)]
pub struct TaskFacts {
    /// The swarm's word for its state: `preparing`, `running`, `complete`, `failed`, ...
    pub state: String,
    /// Whether it has ended (or will not run): complete, failed, rejected, shutdown, ...
    pub ended: bool,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The node it is on.
    pub node_id: Option<String>,
    /// The node's port for the published container port, once running.
    pub published_port: Option<u16>,
    /// Its container, once made.
    pub container_id: Option<String>,
    /// Its exit code, once ended.
    pub exit_code: Option<i64>,
}

/// A service, as listed.
#[derive(Debug, Clone)]
pub struct ServiceSummary {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

impl Engine {
    /// Whether this engine is an active Swarm manager.
    pub async fn is_swarm_manager(&self) -> EngineResult<bool> {
        let info = self.info().await?;
        let swarm = info.swarm.unwrap_or_default();
        Ok(swarm.local_node_state == Some(LocalNodeState::ACTIVE) && swarm.control_available == Some(true))
    }

    /// Creates a secret; returns its id.
    pub async fn create_secret(&self, name: &str, labels: HashMap<String, String>, data: &[u8]) -> EngineResult<String> {
        let spec = SecretSpec { name: Some(name.into()), labels: Some(labels), data: Some(base64::engine::general_purpose::STANDARD.encode(data)), ..Default::default() };
        let created = self.docker.create_secret(spec).await.map_err(|source| EngineError::Swarm { what: format!("create secret {name}"), source })?;
        Ok(created.id)
    }

    /// Removes a secret (404 when there is none).
    pub async fn remove_secret(&self, id: &str) -> EngineResult<()> {
        self.docker.delete_secret(id).await.map_err(|source| EngineError::Swarm { what: format!("remove secret {id}"), source })
    }

    /// Removes a secret, asking again for up to 10 s while the engine says a service still uses
    /// it (a service's removal takes a moment to be seen); 404 when there is none.
    pub async fn remove_secret_when_free(&self, id: &str) -> EngineResult<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.remove_secret(id).await {
                Err(err) if err.status() == Some(400) && std::time::Instant::now() < deadline => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                other => return other,
            }
        }
    }

    /// Creates a service of one task that is never restarted, its port published on its node,
    /// no virtual IP (the VIP balancer needs IPVS in the kernel; Rayfine balances itself).
    pub async fn create_service(&self, request: ServiceRequest) -> EngineResult<String> {
        let container_spec = TaskSpecContainerSpec {
            image: Some(request.image_id.clone()),
            env: Some(request.env),
            labels: Some(request.labels.clone()),
            secrets: request.secret.map(|(id, name, file)| {
                vec![TaskSpecContainerSpecSecrets {
                    secret_id: Some(id),
                    secret_name: Some(name),
                    file: Some(TaskSpecContainerSpecFile { name: Some(file), uid: Some("0".into()), gid: Some("0".into()), mode: Some(0o444) }),
                }]
            }),
            ..Default::default()
        };
        let spec = ServiceSpec {
            name: Some(request.name.clone()),
            labels: Some(request.labels),
            task_template: Some(TaskSpec {
                container_spec: Some(container_spec),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit { nano_cpus: request.nano_cpus, memory_bytes: request.memory_bytes, pids: request.pids_limit }),
                    ..Default::default()
                }),
                // An environment that exits (its lease lapsed, its owner is gone) stays down.
                restart_policy: Some(TaskSpecRestartPolicy { condition: Some(TaskSpecRestartPolicyConditionEnum::NONE), ..Default::default() }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode { replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }), ..Default::default() }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(i64::from(request.port)),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_service(spec, None)
            .await
            .map_err(|source| EngineError::Swarm { what: format!("create service {} from {}", request.name, request.image_id), source })?;
        created.id.ok_or_else(|| EngineError::Swarm {
            what: format!("create service {}", request.name),
            source: bollard::errors::Error::DockerResponseServerError { status_code: 500, message: "the engine answered no service id".into() },
        })
    }

    /// Removes a service; its tasks are shut down (404 when there is none).
    pub async fn remove_service(&self, id: &str) -> EngineResult<()> {
        self.docker.delete_service(id).await.map_err(|source| EngineError::Swarm { what: format!("remove service {id}"), source })
    }

    /// Services with label `key=value`.
    pub async fn list_services(&self, label: &str) -> EngineResult<Vec<ServiceSummary>> {
        let filters = HashMap::from([("label", vec![label.to_string()])]);
        let options = ListServicesOptionsBuilder::default().filters(&filters).build();
        let services = match self.docker.list_services(Some(options)).await {
            Ok(services) => services,
            // Not a manager (or not in a swarm): it has no services.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 503, .. }) => return Ok(Vec::new()),
            Err(source) => return Err(EngineError::Swarm { what: "list services".into(), source }),
        };
        Ok(services
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec.unwrap_or_default();
                Some(ServiceSummary { id: s.id?, name: spec.name.unwrap_or_default(), labels: spec.labels.unwrap_or_default() })
            })
            .collect())
    }

    /// The tasks of a service, newest first.
    pub async fn service_tasks(&self, service_id: &str) -> EngineResult<Vec<TaskFacts>> {
        let filters = HashMap::from([("service", vec![service_id.to_string()])]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        let mut tasks = self.docker.list_tasks(Some(options)).await.map_err(|source| EngineError::Swarm { what: format!("list the tasks of service {service_id}"), source })?;
        tasks.sort_by_key(|task| std::cmp::Reverse(task.created_at.as_ref().map(ToString::to_string)));
        Ok(tasks
            .into_iter()
            .map(|task| {
                let status = task.status.unwrap_or_default();
                let state = status.state.unwrap_or(TaskState::NEW);
                let published_port = status
                    .port_status
                    .and_then(|p| p.ports)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|p| p.published_port.and_then(|port| u16::try_from(port).ok()).filter(|port| *port > 0));
                let container = status.container_status.unwrap_or_default();
                TaskFacts {
                    ended: matches!(state, TaskState::COMPLETE | TaskState::SHUTDOWN | TaskState::FAILED | TaskState::REJECTED | TaskState::REMOVE | TaskState::ORPHANED),
                    state: state.to_string(),
                    error: status.err.filter(|e| !e.is_empty()),
                    node_id: task.node_id,
                    published_port,
                    container_id: container.container_id,
                    exit_code: container.exit_code,
                }
            })
            .collect())
    }

    /// The address a node advertises (where its published ports are reached).
    pub async fn node_address(&self, node_id: &str) -> EngineResult<Option<String>> {
        let node = self.docker.inspect_node(node_id).await.map_err(|source| EngineError::Swarm { what: format!("inspect node {node_id}"), source })?;
        Ok(node.status.and_then(|s| s.addr).filter(|a| !a.is_empty() && a != "0.0.0.0"))
    }
}
