//! A service under test: the real server on a real socket (127.0.0.1, port 0), with its own
//! database, stopped when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portal_platform::ServiceDef;
use portal_platform::config::Settings;
use portal_platform::tls::TlsSettings;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug)]
pub struct TestService {
    def: &'static ServiceDef,
    addr: SocketAddr,
    tls: TlsSettings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestService {
    /// Starts `def` against the database at `database_url` and waits until it is SERVING.
    pub async fn start(
        def: &'static ServiceDef,
        database_url: &SecretString,
    ) -> anyhow::Result<Self> {
        Self::start_with(def, database_url, &[]).await
    }

    /// As [`TestService::start`], with extra `PORTAL_...` settings.
    pub async fn start_with(
        def: &'static ServiceDef,
        database_url: &SecretString,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_configured(def, database_url, settings, |_| {}).await
    }

    /// As [`TestService::start_with`], then `configure` changes what the environment cannot
    /// express (lists of keys, say).
    pub async fn start_configured(
        def: &'static ServiceDef,
        database_url: &SecretString,
        settings: &[(&str, &str)],
        configure: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        crate::init_tracing();
        let mut env: HashMap<String, String> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.insert(
            "PORTAL_DATABASE__URL".to_owned(),
            database_url.expose_secret().to_owned(),
        );
        env.entry("PORTAL_DATABASE__HEALTH_INTERVAL_MS".to_owned())
            .or_insert_with(|| "200".to_owned());
        env.entry("PORTAL_DATABASE__ACQUIRE_TIMEOUT_MS".to_owned())
            .or_insert_with(|| "1000".to_owned());
        env.entry("PORTAL_DEPLOYMENT__REGION".to_owned())
            .or_insert_with(|| crate::keys::TEST_REGION.to_owned());
        let mut settings = Settings::load_from(None, env)?;
        crate::keys::configure(&mut settings)?;
        configure(&mut settings);
        settings.validate()?;
        let tls = settings.tls.clone();
        let settings = Arc::new(settings);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(portal_platform::server::serve(
            def,
            settings,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        let service = Self {
            def,
            addr,
            tls,
            stop: Some(stop),
            task: Some(task),
        };
        service.wait_for(ServingStatus::Serving).await?;
        Ok(service)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, or `https://` when the service runs TLS.
    pub fn uri(&self) -> String {
        format!(
            "{}://{}",
            portal_platform::tls::scheme(&self.tls),
            self.addr
        )
    }

    /// A connected client channel; over TLS it presents the service's own certificate, as a
    /// peer service would.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(self.uri())?;
        if let Some(tls) = portal_platform::tls::client_config(&self.tls, "localhost")? {
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint.connect().await?)
    }

    /// The service's health as `grpc.health.v1` reports it for its own service name.
    pub async fn health(&self) -> anyhow::Result<ServingStatus> {
        let mut client = HealthClient::new(self.channel().await?);
        let response = client
            .check(HealthCheckRequest {
                service: self.def.grpc_service.to_owned(),
            })
            .await?;
        Ok(response.into_inner().status())
    }

    /// Waits (up to 10 s) until health reports `status`.
    pub async fn wait_for(&self, status: ServingStatus) -> anyhow::Result<()> {
        crate::eventually(Duration::from_secs(10), &format!("{status:?}"), || async {
            matches!(self.health().await, Ok(s) if s == status).then_some(())
        })
        .await
    }

    /// Stops the service gracefully and returns how its server ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
