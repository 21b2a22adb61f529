//! The whole suite as production runs it, for end-to-end tests: the four real service binaries
//! (`identity-service`, `consent-service`, `approval-service`, `transfer-service`), each its own
//! process on a free port of 127.0.0.1, calling each other over mutual TLS with one CA (as
//! `docs/tls.md` configures a deployment), against a fresh PostgreSQL database. Tests reach
//! them only over gRPC, the way the portal's back end and compliance staff do, so what they
//! prove holds for what is deployed: the binaries' command line, configuration loading, TLS,
//! tokens between services, and what survives a process that dies (`kill`, `restart`).
//!
//! The binaries are taken from the cargo target directory the test binary runs from.
//! `cargo test --workspace` builds them before running any test; `cargo test -p portal-tests`
//! alone does not, so run `cargo build --workspace --bins` first in that case (a missing
//! binary fails the suite's start saying so).
//!
//! Every process trusts the harness's key (`portal_testkit::keys`), so tests mint whatever
//! token they need, and signs its own SERVICE tokens with it. Each process's output goes to a
//! log file of the suite ([`Suite::logs`]); the tail of every log is printed when start-up
//! fails, and when a test panics while holding the suite.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use ed25519_dalek::VerifyingKey;
use portal_platform::ServiceDef;
use portal_platform::time::to_timestamp;
use portal_platform::tls::TlsSettings;
use portal_proto::approval::v1::approval_request::Kind as RequestKind;
use portal_proto::approval::v1::approval_service_client::ApprovalServiceClient;
use portal_proto::approval::v1::{ApprovalRequest, CreateApprovalRequestRequest};
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{
    ConsentState, GetConsentStateRequest, PolicyDocument, PublishDocumentVersionRequest,
};
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{
    AccessToken, ActivateUserRequest, Attestation, CreateTenantRequest, DeleteUserRequest,
    DeletionReceipt, RegisterUserRequest, RegisterUserResponse, SignInRequest, Tenant, User,
};
use portal_proto::transfer::v1::affiliate_transfer_service_client::AffiliateTransferServiceClient;
use portal_proto::transfer::v1::group_entity::Kind as EntityKind;
use portal_proto::transfer::v1::{
    AuthorizeTransferRequest, Checkpoint, CreateEntityRequest, DataCategory,
    ExportTransferRecordsRequest, GetCheckpointRequest, GetConsistencyProofRequest, GroupEntity,
    ListSigningKeysRequest, Purpose, TransferRecord,
};
use portal_testkit::pki::TestPki;
use portal_testkit::{TestDb, eventually};
use secrecy::{ExposeSecret, SecretString};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a process may take to answer SERVING: a debug build starting on a busy CI machine.
const STARTUP: Duration = Duration::from_secs(60);

/// How long a SIGTERM'd process may take to drain and exit (the default grace is 20 s).
const SHUTDOWN: Duration = Duration::from_secs(30);

/// Lines of each log shown when something fails.
const LOG_TAIL: usize = 40;

/// The host name every process calls the others by: the one the test certificate names.
const HOST: &str = "localhost";

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Identity,
    Consent,
    Approval,
    Transfer,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Identity,
        Service::Consent,
        Service::Approval,
        Service::Transfer,
    ];

    pub fn def(self) -> &'static ServiceDef {
        match self {
            Service::Identity => &identity_service::SERVICE,
            Service::Consent => &consent_service::SERVICE,
            Service::Approval => &approval_service::SERVICE,
            Service::Transfer => &transfer_service::SERVICE,
        }
    }

    /// Short name, also its configuration section: `identity`, ...
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The gRPC service name health reports on, e.g. `portal.identity.v1.IdentityService`.
    pub fn grpc_service(self) -> &'static str {
        self.def().grpc_service
    }

    /// The binary's file name, e.g. `identity-service`.
    pub fn binary(self) -> String {
        format!("{}-service", self.name())
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `PORTAL_<SECTION>__<KEY>` for this service's section.
    fn setting(self, key: &str) -> String {
        format!("PORTAL_{}__{key}", self.name().to_ascii_uppercase())
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Extra settings for the processes, as `PORTAL_...` environment variables. They win over the
/// suite's own (and `service_env` over `env`), so a test can change anything.
#[derive(Debug, Clone, Default)]
pub struct SuiteOptions {
    /// For every process.
    pub env: Vec<(String, String)>,
    /// For one process only.
    pub service_env: Vec<(Service, String, String)>,
}

impl SuiteOptions {
    /// Sets `key` for every process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets `key` for `service`'s process only.
    pub fn service_env(
        mut self,
        service: Service,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.service_env.push((service, key.into(), value.into()));
        self
    }
}

/// One service's process: its ports, kept across restarts, and its log.
#[derive(Debug)]
struct Process {
    service: Service,
    port: u16,
    metrics_port: u16,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    channel: Channel,
}

impl Process {
    fn kill(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SIGKILL on unix: no drain, no flush, as if the machine lost power.
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The four services running as separate processes against one fresh database.
#[derive(Debug)]
pub struct Suite {
    // Declared first so the processes are gone before their database is dropped.
    processes: Vec<Process>,
    options: SuiteOptions,
    config: PathBuf,
    tls: TlsSettings,
    _pki: TestPki,
    dir: tempfile::TempDir,
    db: TestDb,
}

impl Suite {
    /// Starts the four services and returns once each answers SERVING.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(SuiteOptions::default()).await
    }

    /// As [`Suite::start`], with extra settings for the processes.
    pub async fn start_with(options: SuiteOptions) -> anyhow::Result<Self> {
        let db = TestDb::new(&crate::all_schemas()).await?;
        let pki = TestPki::new()?;
        let tls = pki.service();
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("portal.toml");
        std::fs::write(&config, portal_testkit::keys::config_toml()?)?;
        // Every endpoint must be known before the first process starts, since each is told
        // where the others are. A port found free may be taken again before the process binds
        // it; start-up then fails naming the address.
        // Two ports per process, taken in one go so none is handed out twice: gRPC, and the
        // Prometheus scrape every process serves as in production.
        let ports = free_ports(2 * Service::ALL.len())?;
        let mut processes = Vec::with_capacity(Service::ALL.len());
        for (service, ports) in Service::ALL.into_iter().zip(ports.chunks(2)) {
            let (port, metrics_port) = (ports[0], ports[1]);
            processes.push(Process {
                service,
                port,
                metrics_port,
                log: dir.path().join(format!("{service}.log")),
                child: None,
                starts: 0,
                channel: channel(&tls, port)?,
            });
        }
        let mut suite = Self {
            processes,
            options,
            config,
            tls,
            _pki: pki,
            dir,
            db,
        };
        for service in Service::ALL {
            suite.spawn(service)?;
        }
        for service in Service::ALL {
            suite.wait_until_serving(service).await?;
        }
        Ok(suite)
    }

    /// The superuser URL of the suite's database, for checks the contracts offer no call for.
    pub fn database_url(&self) -> &SecretString {
        self.db.url()
    }

    /// The suite's database.
    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// Where `service`'s process serves its Prometheus scrape (`GET /metrics`).
    pub fn metrics_addr(&self, service: Service) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.process(service).metrics_port).into()
    }

    /// The port `service` listens on (the same across restarts).
    pub fn port(&self, service: Service) -> u16 {
        self.process(service).port
    }

    /// `https://localhost:<port>`, as the other services call `service`.
    pub fn uri(&self, service: Service) -> String {
        uri(self.port(service))
    }

    /// The process id of `service`, while it runs.
    pub fn pid(&self, service: Service) -> Option<u32> {
        self.process(service).child.as_ref().map(Child::id)
    }

    /// A channel to `service` over mutual TLS, presenting the services' certificate as a peer
    /// service would. It connects lazily and reconnects after a restart; the first call after
    /// the process died may fail `UNAVAILABLE`.
    pub fn channel(&self, service: Service) -> Channel {
        self.process(service).channel.clone()
    }

    pub fn identity(&self) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.channel(Service::Identity))
    }

    pub fn consent(&self) -> ConsentServiceClient<Channel> {
        ConsentServiceClient::new(self.channel(Service::Consent))
    }

    pub fn approval(&self) -> ApprovalServiceClient<Channel> {
        ApprovalServiceClient::new(self.channel(Service::Approval))
    }

    pub fn transfer(&self) -> AffiliateTransferServiceClient<Channel> {
        AffiliateTransferServiceClient::new(self.channel(Service::Transfer))
    }

    /// Everything `service`'s processes have written so far, every start included.
    pub fn logs(&self, service: Service) -> String {
        std::fs::read(&self.process(service).log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Kills `service` with SIGKILL and waits until it is gone: nothing it had not committed
    /// survives, and it answers nothing until restarted.
    pub fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        let process = self.process_mut(service);
        anyhow::ensure!(process.child.is_some(), "{service} is not running");
        process
            .kill()
            .with_context(|| format!("killing {service}"))?;
        self.note(service, "killed (SIGKILL)");
        Ok(())
    }

    /// Stops `service` with SIGTERM, as Kubernetes does, and waits for it to drain and exit.
    pub async fn stop(&mut self, service: Service) -> anyhow::Result<ExitStatus> {
        let pid = self
            .pid(service)
            .with_context(|| format!("{service} is not running"))?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let mut child = self
            .process_mut(service)
            .child
            .take()
            .with_context(|| format!("{service} is not running"))?;
        let exited = eventually(SHUTDOWN, "the exit after SIGTERM", || {
            std::future::ready(child.try_wait().ok().flatten())
        })
        .await;
        match exited {
            Ok(status) => {
                self.note(service, &format!("stopped (SIGTERM): {status}"));
                Ok(status)
            }
            Err(e) => {
                child.kill()?;
                child.wait()?;
                anyhow::bail!("{service}: {e}; killed")
            }
        }
    }

    /// Starts `service` again on its port (killing it first if it still runs) and waits until
    /// it answers SERVING. Clients taken from [`Suite::channel`] afterwards use a new channel.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        if self.process(service).child.is_some() {
            self.kill(service)?;
        }
        let port = self.port(service);
        self.process_mut(service).channel = channel(&self.tls, port)?;
        self.spawn(service)?;
        self.wait_until_serving(service).await
    }

    /// What `grpc.health.v1` reports for `service`'s gRPC name, over a fresh connection.
    pub async fn health(&self, service: Service) -> anyhow::Result<ServingStatus> {
        let port = self.port(service);
        let channel = endpoint(&self.tls, port)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.grpc_service().to_owned(),
            })
            .await?;
        Ok(answer.into_inner().status())
    }

    fn process(&self, service: Service) -> &Process {
        &self.processes[service.index()]
    }

    fn process_mut(&mut self, service: Service) -> &mut Process {
        &mut self.processes[service.index()]
    }

    /// The settings every process gets: where each service listens and is reached, TLS, the
    /// database, then the test's own.
    fn environment(&self, service: Service) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |key: &str, value: String| {
            env.insert(key.to_owned(), value);
        };
        set(
            "PORTAL_DATABASE__URL",
            self.db.url().expose_secret().to_owned(),
        );
        // Health follows the database closely, so restarts are noticed quickly.
        set("PORTAL_DATABASE__HEALTH_INTERVAL_MS", "200".to_owned());
        set(
            "PORTAL_DEPLOYMENT__REGION",
            portal_testkit::keys::TEST_REGION.to_owned(),
        );
        set("PORTAL_TELEMETRY__LOG_FILTER", "info".to_owned());
        set(
            "PORTAL_TELEMETRY__METRICS_LISTEN",
            self.metrics_addr(service).to_string(),
        );
        let path = |file: &Option<PathBuf>| {
            file.as_deref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        set("PORTAL_TLS__CERT_FILE", path(&self.tls.cert_file));
        set("PORTAL_TLS__KEY_FILE", path(&self.tls.key_file));
        set("PORTAL_TLS__CLIENT_CA_FILE", path(&self.tls.client_ca_file));
        set("PORTAL_TLS__CA_FILE", path(&self.tls.ca_file));
        for process in &self.processes {
            let peer = process.service;
            set(
                &peer.setting("LISTEN"),
                format!("127.0.0.1:{}", process.port),
            );
            set(&peer.setting("ENDPOINT"), uri(process.port));
        }
        for (key, value) in &self.options.env {
            set(key, value.clone());
        }
        for (only, key, value) in &self.options.service_env {
            if *only == service {
                set(key, value.clone());
            }
        }
        env
    }

    fn spawn(&mut self, service: Service) -> anyhow::Result<()> {
        let binary = binary(service)?;
        let env = self.environment(service);
        let process = self.process_mut(service);
        process.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&process.log)?;
        writeln!(
            log,
            "===== {} start {} on port {} =====",
            service.binary(),
            process.starts,
            process.port
        )?;
        let mut command = Command::new(&binary);
        command.arg("--config").arg(&self.config);
        // Only what the suite sets: settings of the machine running the tests must not leak in.
        command.env_remove("DATABASE_URL");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PORTAL_") {
                command.env_remove(key);
            }
        }
        let child = command
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.process_mut(service).child = Some(child);
        Ok(())
    }

    async fn wait_until_serving(&mut self, service: Service) -> anyhow::Result<()> {
        let mut child = self
            .process_mut(service)
            .child
            .take()
            .with_context(|| format!("{service} is not running"))?;
        // Ready when health says SERVING; given up at once if the process exits first.
        let outcome = eventually(STARTUP, "SERVING", || {
            let exited = child.try_wait();
            let health = self.health(service);
            async move {
                match exited {
                    Err(e) => Some(Err(anyhow::Error::from(e))),
                    Ok(Some(status)) => Some(Err(anyhow::anyhow!(
                        "{service} exited ({status}) before it was SERVING"
                    ))),
                    Ok(None) => {
                        matches!(health.await, Ok(ServingStatus::Serving)).then_some(Ok(()))
                    }
                }
            }
        })
        .await
        .and_then(|outcome| outcome);
        match outcome {
            Ok(()) => {
                self.process_mut(service).child = Some(child);
                Ok(())
            }
            Err(e) => {
                // Not left running unseen: a process that never served is stopped here.
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("{service}: {e}\n{}", self.tails())
            }
        }
    }

    /// Marks an event in `service`'s log, so the log reads in order with what the test did.
    fn note(&self, service: Service, what: &str) {
        let log = OpenOptions::new()
            .append(true)
            .open(&self.process(service).log);
        if let Ok(mut log) = log {
            let _ = writeln!(log, "===== {} {what} =====", service.binary());
        }
    }

    /// The last lines of every process's log.
    pub fn tails(&self) -> String {
        let mut out = String::new();
        for service in Service::ALL {
            let logs = self.logs(service);
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            out.push_str(&format!(
                "----- {} (last {} lines of {}) -----\n{}\n",
                service.binary(),
                tail.len(),
                self.process(service).log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// The TLS files every process uses (the test CA, and the certificate and key that serve
    /// and call), for clients from outside such as the auditor's `transfer-verify`.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The folder holding the configuration file and the logs (removed with the suite).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the suite's processes, as the test failed:\n{}",
                self.tails()
            );
        }
    }
}

/// The binary of `service` next to the test binary: `<target>/<profile>/deps/<test>` runs,
/// `<target>/<profile>/<binary>` is the service.
fn binary(service: Service) -> anyhow::Result<PathBuf> {
    workspace_binary(&service.binary())
}

/// A binary of the workspace (`transfer-verify`, say), from the target directory this test runs
/// from.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("no target directory above {}", exe.display()))?;
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: the end-to-end tests run the real service binaries. Build them with \
         `cargo test --workspace` (which builds every binary before testing) or \
         `cargo build --workspace --bins`",
        path.display()
    );
    Ok(path)
}

/// `count` distinct free ports of 127.0.0.1, all held at once while they are picked (for a
/// second port per process, such as `telemetry.metrics_listen` through
/// [`SuiteOptions::service_env`]).
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

fn uri(port: u16) -> String {
    format!("https://{HOST}:{port}")
}

fn endpoint(tls: &TlsSettings, port: u16) -> anyhow::Result<Endpoint> {
    let config = portal_platform::tls::client_config(tls, HOST)?
        .context("the suite's TLS settings name no CA")?;
    Ok(Endpoint::from_shared(uri(port))?.tls_config(config)?)
}

fn channel(tls: &TlsSettings, port: u16) -> anyhow::Result<Channel> {
    Ok(endpoint(tls, port)?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// The password every journey's users choose.
pub const PASSWORD: &str = "correct horse battery staple";

/// Requests as the callers the journeys speak as, with tokens from the harness's key.
pub mod callers {
    use portal_platform::auth::Kind;
    use portal_testkit::keys::{self, authorized};
    use tonic::Request;

    pub fn operator<T>(message: T) -> Request<T> {
        authorized(message, &keys::operator_token())
    }

    pub fn auditor<T>(message: T) -> Request<T> {
        let token = keys::token(Kind::Auditor, "auditors/compliance", None, &[]);
        authorized(message, &token)
    }

    /// The portal's sign-up and sign-in back end, relaying what users type.
    pub fn portal_web<T>(message: T) -> Request<T> {
        let token = keys::token(Kind::Service, "services/portal-web", None, &[]);
        authorized(message, &token)
    }

    /// The portal back end that moves PI, asking the transfer service first.
    pub fn portal_backend<T>(message: T) -> Request<T> {
        let token = keys::token(Kind::Service, "services/portal-backend", None, &[]);
        authorized(message, &token)
    }

    /// A user of `tenant` with `role` (`TENANT_ADMIN`, `MEMBER`), minted rather than signed in:
    /// approval and transfer verify tokens themselves, identity also checks the user exists.
    pub fn minted_user<T>(message: T, user: &str, tenant: &str, role: &str) -> Request<T> {
        let token = keys::token(Kind::User, user, Some(tenant), &[role]);
        authorized(message, &token)
    }
}

/// The entities [`Suite::register_group`] registers.
#[derive(Debug, Clone)]
pub struct Group {
    pub operator: GroupEntity,
    pub affiliate: GroupEntity,
    pub third_party: GroupEntity,
}

/// A Portal User as identity holds them, with the access token SignIn issued them.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: User,
    pub token: String,
}

impl SignedIn {
    /// `message` as a call by this user.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        portal_testkit::keys::authorized(message, &self.token)
    }
}

/// Person `n`: a name, an email and a phone number of their own, and `roles`.
pub fn person(n: u32, roles: &[Role]) -> User {
    User {
        display_name: format!("Example Person {n}"),
        email: format!("person{n}@example.com"),
        phone_number: format!("+8131234{n:04}"),
        roles: roles.iter().map(|r| i32::from(*r)).collect(),
        ..User::default()
    }
}

/// The contracting customer's attestation that the user consented (Art. 5.2), by `by`.
pub fn attestation(by: &str) -> Attestation {
    Attestation {
        attested_by: by.to_owned(),
        attest_time: Some(to_timestamp(Utc::now())),
        evidence_uri: "https://contracts.example.com/evidence/8c1f".to_owned(),
    }
}

/// A contract-party registration of `user` in `tenant`, attested by `attested_by`.
pub fn registration(tenant: &Tenant, user: User, attested_by: &str) -> RegisterUserRequest {
    RegisterUserRequest {
        request_id: new_request_id(),
        parent: tenant.name.clone(),
        user: Some(user),
        password: String::new(),
        attestation: Some(attestation(attested_by)),
    }
}

/// A transfer of `subject`'s name and email from `from` to `to`, for `purpose`.
pub fn transfer_request(
    subject: &str,
    from: &GroupEntity,
    to: &GroupEntity,
    purpose: Purpose,
) -> AuthorizeTransferRequest {
    AuthorizeTransferRequest {
        request_id: new_request_id(),
        subject: subject.to_owned(),
        data_categories: vec![DataCategory::Name.into(), DataCategory::Email.into()],
        source_entity: from.name.clone(),
        destination_entity: to.name.clone(),
        purpose: purpose.into(),
        legal_reference: String::new(),
    }
}

/// A TENANT_CONNECTION request to `target_tenant`, with `message`.
pub fn connection_request(target_tenant: &str, message: &str) -> CreateApprovalRequestRequest {
    CreateApprovalRequestRequest {
        request_id: new_request_id(),
        approval_request: Some(ApprovalRequest {
            kind: RequestKind::TenantConnection.into(),
            target_tenant: target_tenant.to_owned(),
            message: message.to_owned(),
            ..ApprovalRequest::default()
        }),
    }
}

/// A fresh `request_id` (AIP-155).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The steps every journey takes, each as the caller who takes it in production.
impl Suite {
    /// An operator publishes terms `version`, in force from now (a material revision after
    /// the first).
    pub async fn publish_terms(&self, version: i64) -> anyhow::Result<PolicyDocument> {
        let document = PolicyDocument {
            kind: DocumentKind::Terms.into(),
            version,
            label: format!("v{version}"),
            uri: format!("https://portal.example.com/terms/{version}"),
            content_sha256: format!("{version:064x}"),
            effective_time: Some(to_timestamp(Utc::now())),
            change_summary: if version > 1 {
                format!("Revision {version}")
            } else {
                String::new()
            },
            material_change: version > 1,
            ..PolicyDocument::default()
        };
        let request = PublishDocumentVersionRequest {
            request_id: new_request_id(),
            document: Some(document),
        };
        Ok(self
            .consent()
            .publish_document_version(callers::operator(request))
            .await?
            .into_inner())
    }

    /// An operator registers the entities the journeys move PI between: the operator (Japan),
    /// an affiliate abroad (Singapore) and a third party outside the group (US).
    pub async fn register_group(&self) -> anyhow::Result<Group> {
        Ok(Group {
            operator: (self.create_entity(
                EntityKind::Operator,
                "Example Operator K.K.",
                "JP",
                "jp",
            ))
            .await?,
            affiliate: (self.create_entity(
                EntityKind::Affiliate,
                "Example Affiliate Pte. Ltd.",
                "SG",
                "sg",
            ))
            .await?,
            third_party: (self.create_entity(
                EntityKind::ThirdParty,
                "Example Analytics Inc.",
                "US",
                "us",
            ))
            .await?,
        })
    }

    /// An operator registers a group entity (or a third party).
    pub async fn create_entity(
        &self,
        kind: EntityKind,
        legal_name: &str,
        country: &str,
        region: &str,
    ) -> anyhow::Result<GroupEntity> {
        let request = CreateEntityRequest {
            request_id: new_request_id(),
            entity: Some(GroupEntity {
                kind: kind.into(),
                legal_name: legal_name.to_owned(),
                country_code: country.to_owned(),
                region: region.to_owned(),
                ..GroupEntity::default()
            }),
        };
        Ok(self
            .transfer()
            .create_entity(callers::operator(request))
            .await?
            .into_inner())
    }

    /// An operator creates a tenant: a Party to Portal Contract.
    pub async fn create_tenant(
        &self,
        display_name: &str,
        contract_reference: &str,
    ) -> anyhow::Result<Tenant> {
        let request = CreateTenantRequest {
            request_id: new_request_id(),
            tenant: Some(Tenant {
                display_name: display_name.to_owned(),
                contract_reference: contract_reference.to_owned(),
                ..Tenant::default()
            }),
        };
        Ok(self
            .identity()
            .create_tenant(callers::operator(request))
            .await?
            .into_inner())
    }

    /// The tenant's first administrator, person `n`: registered by an operator from the
    /// contract records, activated, signed in.
    pub async fn first_admin(&self, tenant: &Tenant, n: u32) -> anyhow::Result<SignedIn> {
        let request = registration(
            tenant,
            person(n, &[Role::TenantAdmin]),
            "contracts/PSC-2026-000001/signatories/1",
        );
        let registered = self
            .identity()
            .register_user(callers::operator(request))
            .await?
            .into_inner();
        self.activate_and_sign_in(&registered).await
    }

    /// The registered user sets their password with the activation secret, then signs in.
    pub async fn activate_and_sign_in(
        &self,
        registered: &RegisterUserResponse,
    ) -> anyhow::Result<SignedIn> {
        let request = ActivateUserRequest {
            activation_secret: registered.activation_secret.clone(),
            password: PASSWORD.to_owned(),
        };
        let user = self
            .identity()
            .activate_user(callers::portal_web(request))
            .await?
            .into_inner();
        let token = self.sign_in(&user.email).await?;
        anyhow::ensure!(token.user == user.name, "signed in as {}", token.user);
        Ok(SignedIn {
            user,
            token: token.access_token,
        })
    }

    /// The portal's back end signs a user in with their email and password.
    /// The user deletes their own registration (Art. 5.3); identity's signed receipt.
    pub async fn delete_own_registration(
        &self,
        user: &SignedIn,
    ) -> anyhow::Result<DeletionReceipt> {
        let request = DeleteUserRequest {
            name: user.user.name.clone(),
            etag: String::new(),
            request_id: new_request_id(),
        };
        Ok(self
            .identity()
            .delete_user(user.request(request))
            .await?
            .into_inner())
    }

    pub async fn sign_in(&self, email: &str) -> anyhow::Result<AccessToken> {
        let request = SignInRequest {
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
        };
        Ok(self
            .identity()
            .sign_in(callers::portal_web(request))
            .await?
            .into_inner())
    }

    /// The portal's back end asks before a transfer, as `services/portal-backend`.
    pub async fn authorize(
        &self,
        request: AuthorizeTransferRequest,
    ) -> Result<TransferRecord, tonic::Status> {
        self.transfer()
            .authorize_transfer(callers::portal_backend(request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The consent state of `subject`, as an operator reads it.
    pub async fn consent_state(&self, subject: &str) -> anyhow::Result<ConsentState> {
        let request = GetConsentStateRequest {
            subject: subject.to_owned(),
        };
        Ok(self
            .consent()
            .get_consent_state(callers::operator(request))
            .await?
            .into_inner())
    }

    /// The latest signed checkpoint once it covers at least `size` records.
    pub async fn checkpoint(&self, size: i64) -> anyhow::Result<Checkpoint> {
        let transfer = self.transfer();
        eventually(
            STARTUP,
            &format!("a checkpoint of at least {size} records"),
            || {
                let mut transfer = transfer.clone();
                async move {
                    let checkpoint = transfer
                        .get_checkpoint(callers::auditor(GetCheckpointRequest {}))
                        .await
                        .ok()?
                        .into_inner();
                    (checkpoint.tree_size >= size).then_some(checkpoint)
                }
            },
        )
        .await
    }

    /// An auditor's export of the whole transfer log, in sequence order.
    pub async fn export_transfer_log(&self) -> anyhow::Result<Vec<TransferRecord>> {
        let mut stream = self
            .transfer()
            .export_transfer_records(callers::auditor(ExportTransferRecordsRequest::default()))
            .await?
            .into_inner();
        let mut records = Vec::new();
        while let Some(record) = stream.message().await? {
            records.push(record);
        }
        Ok(records)
    }

    /// The public key that verifies checkpoints signed under `key_id`, as the transfer
    /// service publishes it.
    pub async fn transfer_key(&self, key_id: &str) -> anyhow::Result<VerifyingKey> {
        let keys = self
            .transfer()
            .list_signing_keys(callers::auditor(ListSigningKeysRequest::default()))
            .await?
            .into_inner()
            .signing_keys;
        let key = keys
            .iter()
            .find(|k| k.key_id == key_id)
            .with_context(|| format!("transfer publishes no key `{key_id}`"))?;
        let bytes: [u8; 32] = key
            .public_key
            .as_slice()
            .try_into()
            .context("a published key is not 32 bytes")?;
        Ok(VerifyingKey::from_bytes(&bytes)?)
    }

    /// What an auditor does offline (`transfer-verify`): the exported log, checked against the
    /// latest signed checkpoint covering at least `size` records. Returns that checkpoint and
    /// the records.
    pub async fn verify_transfer_log(
        &self,
        size: i64,
    ) -> anyhow::Result<(Checkpoint, Vec<TransferRecord>)> {
        let checkpoint = self.checkpoint(size).await?;
        let records = self.export_transfer_log().await?;
        let key = self.transfer_key(&checkpoint.key_id).await?;
        let verified = transfer_verify::verify_export(&records, &checkpoint, &key)?;
        anyhow::ensure!(
            verified.tree_size == checkpoint.tree_size,
            "verified {verified:?} of {}",
            checkpoint.tree_size
        );
        Ok((checkpoint, records))
    }

    /// That `older` is a prefix of `newer`, by the consistency proof the service gives and the
    /// verifier checks.
    pub async fn verify_consistency(
        &self,
        older: &Checkpoint,
        newer: &Checkpoint,
    ) -> anyhow::Result<()> {
        let proof = self
            .transfer()
            .get_consistency_proof(callers::auditor(GetConsistencyProofRequest {
                first_size: older.tree_size,
                second_size: newer.tree_size,
            }))
            .await?
            .into_inner();
        let key = self.transfer_key(&newer.key_id).await?;
        Ok(transfer_verify::verify_consistency(
            older, newer, &proof, &key,
        )?)
    }
}
