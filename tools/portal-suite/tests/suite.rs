//! The README's first command, run as a user would: the real `portal-suite` binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use portal_proto::identity::v1::GetTenantRequest;
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_testkit::TestDb;
use secrecy::ExposeSecret;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICES: [&str; 4] = [
    "portal.identity.v1.IdentityService",
    "portal.consent.v1.ConsentService",
    "portal.approval.v1.ApprovalService",
    "portal.transfer.v1.AffiliateTransferService",
];

/// A `portal-suite` process on free ports (so parallel runs do not collide).
fn suite() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portal-suite"));
    for service in ["IDENTITY", "CONSENT", "APPROVAL", "TRANSFER"] {
        command.env(format!("PORTAL_{service}__LISTEN"), "127.0.0.1:0");
    }
    command
        .env_remove("DATABASE_URL")
        .env_remove("PORTAL_DATABASE__URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Reads the suite's announcements until it says it is up; returns each service's address.
fn wait_until_up(child: &mut Child) -> (Vec<(String, String)>, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut listening = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .expect("portal-suite did not come up in time");
        if line.contains("portal-suite is up") {
            return (listening, lines);
        }
        if let Some((head, addr)) = line.split_once(" listening on ") {
            let grpc_name = head.split_whitespace().nth(1).unwrap().to_owned();
            listening.push((grpc_name, addr.trim().to_owned()));
        }
    }
}

async fn health(addr: &str, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    Some(client.check(request).await.ok()?.into_inner().status())
}

async fn assert_all_serving(listening: &[(String, String)]) {
    let names: Vec<&str> = listening.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, SERVICES);
    for (service, addr) in listening {
        portal_testkit::eventually(Duration::from_secs(30), service, || async {
            (health(addr, service).await == Some(ServingStatus::Serving)).then_some(())
        })
        .await
        .unwrap();
    }
}

/// Kills the suite if a test fails before stopping it, so no process or PostgreSQL outlives
/// the test run.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn rest_of_output(child: &mut Child, lines: mpsc::Receiver<String>) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let stdout: Vec<String> = lines.iter().collect();
    format!("{}\n{stderr}", stdout.join("\n"))
}

async fn get_tenant(addr: &str, token: Option<&str>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = IdentityServiceClient::new(channel);
    let mut request = tonic::Request::new(GetTenantRequest {
        name: "tenants/0190f7a0-0000-7000-8000-000000000000".to_owned(),
    });
    if let Some(token) = token {
        let value = format!("Bearer {}", token.trim()).parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    client.get_tenant(request).await.unwrap_err()
}

fn mint(data_dir: &std::path::Path, args: &[&str]) -> String {
    let minted = Command::new(env!("CARGO_BIN_EXE_portal-suite"))
        .args(["--data-dir", &data_dir.to_string_lossy(), "mint-token"])
        .args(args)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    String::from_utf8(minted.stdout).unwrap().trim().to_owned()
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {}", token.trim()).parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Even on free ports the services find each other: identity records consent in consent,
/// and approval asks identity about the target tenant.
async fn services_reach_each_other(
    listening: &[(String, String)],
    operator: &str,
    data_dir: &std::path::Path,
) {
    use portal_proto::approval::v1::approval_service_client::ApprovalServiceClient;
    use portal_proto::approval::v1::{ApprovalRequest, CreateApprovalRequestRequest};
    use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
    use portal_proto::consent::v1::{PolicyDocument, PublishDocumentVersionRequest};
    use portal_proto::identity::v1::{CreateTenantRequest, RegisterUserRequest, Tenant, User};

    let mut consent = ConsentServiceClient::new(channel(&listening[1].1).await);
    let terms = PolicyDocument {
        kind: portal_proto::consent::v1::policy_document::Kind::Terms.into(),
        version: 1,
        label: "v1".into(),
        uri: "https://portal.example.com/terms/1".into(),
        content_sha256: format!("{:064x}", 1),
        ..PolicyDocument::default()
    };
    let publish = PublishDocumentVersionRequest {
        request_id: String::new(),
        document: Some(terms),
    };
    consent
        .publish_document_version(bearer(publish, operator))
        .await
        .unwrap();
    let mut identity = IdentityServiceClient::new(channel(&listening[0].1).await);
    let tenant = |reference: &str| CreateTenantRequest {
        request_id: String::new(),
        tenant: Some(Tenant {
            display_name: "Example Corporation".into(),
            contract_reference: reference.into(),
            ..Tenant::default()
        }),
    };
    let a = identity
        .create_tenant(bearer(tenant("PSC-A"), operator))
        .await
        .unwrap()
        .into_inner();
    let b = identity
        .create_tenant(bearer(tenant("PSC-B"), operator))
        .await
        .unwrap()
        .into_inner();
    let signup = mint(
        data_dir,
        &["--kind", "SERVICE", "--subject", "services/portal-web"],
    );
    let register = RegisterUserRequest {
        request_id: String::new(),
        parent: a.name.clone(),
        user: Some(User {
            display_name: "Example User".into(),
            email: "user@example.com".into(),
            roles: vec![portal_proto::identity::v1::user::Role::Member.into()],
            ..User::default()
        }),
        password: "correct horse battery staple".into(),
        attestation: None,
    };
    let user = identity
        .register_user(bearer(register, &signup))
        .await
        .expect("identity records the consent in consent")
        .into_inner()
        .user
        .unwrap();
    let token = mint(
        data_dir,
        &[
            "--kind",
            "USER",
            "--subject",
            &user.name,
            "--tenant",
            &a.name,
            "--role",
            "MEMBER",
        ],
    );
    let mut approval = ApprovalServiceClient::new(channel(&listening[2].1).await);
    let send = CreateApprovalRequestRequest {
        request_id: String::new(),
        approval_request: Some(ApprovalRequest {
            kind: portal_proto::approval::v1::approval_request::Kind::TenantConnection.into(),
            target_tenant: b.name.clone(),
            ..ApprovalRequest::default()
        }),
    };
    let sent = approval
        .create_approval_request(bearer(send, &token))
        .await
        .expect("approval asks identity about the target tenant")
        .into_inner();
    assert_eq!(
        sent.target_tenant_profile.unwrap().contract_reference,
        "PSC-B"
    );
}

#[tokio::test]
async fn the_suite_serves_all_four_services_and_stops_cleanly_on_sigterm() {
    let db = TestDb::new(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Trust authentication ignores the password, so it can stand in for a real secret.
    let url = db
        .url()
        .expose_secret()
        .replace("postgres@", "postgres:hunter2-not-for-logs@");
    let mut child = suite()
        .env("DATABASE_URL", &url)
        .arg("--data-dir")
        .arg(dir.path())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let (listening, lines) = wait_until_up(&mut child);
    assert_all_serving(&listening).await;

    // Development keys: a call without a token is refused; the written OPERATOR token and a
    // token from `mint-token` are accepted.
    let identity = &listening[0].1;
    let refused = get_tenant(identity, None).await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let operator = std::fs::read_to_string(dir.path().join("operator.token")).unwrap();
    let accepted = get_tenant(identity, Some(&operator)).await;
    assert_ne!(
        accepted.code(),
        tonic::Code::Unauthenticated,
        "{accepted:?}"
    );
    let minted = Command::new(env!("CARGO_BIN_EXE_portal-suite"))
        .args(["--data-dir", &dir.path().to_string_lossy(), "mint-token"])
        .args(["--kind", "USER", "--subject", "tenants/a/users/b"])
        .args(["--tenant", "tenants/a", "--role", "MEMBER"])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let user_token = String::from_utf8(minted.stdout).unwrap();
    let accepted = get_tenant(identity, Some(&user_token)).await;
    assert_ne!(
        accepted.code(),
        tonic::Code::Unauthenticated,
        "{accepted:?}"
    );

    // `--key-id` names the key in the token: one the suite does not trust is refused.
    let other_key = Command::new(env!("CARGO_BIN_EXE_portal-suite"))
        .args(["--data-dir", &dir.path().to_string_lossy(), "mint-token"])
        .args(["--kind", "OPERATOR", "--subject", "operators/me"])
        .args(["--key-id", "operators-2027"])
        .output()
        .unwrap();
    assert!(other_key.status.success(), "{other_key:?}");
    let other_key = String::from_utf8(other_key.stdout).unwrap();
    let refused = get_tenant(identity, Some(&other_key)).await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    services_reach_each_other(&listening, &operator, dir.path()).await;

    terminate(&child);
    let status = child.wait().unwrap();
    let output = rest_of_output(&mut child, lines);
    assert!(status.success(), "exit {status}: {output}");
    assert!(output.contains("portal-suite stopped"), "{output}");
    assert!(
        !output.contains("hunter2-not-for-logs"),
        "a secret was printed: {output}"
    );
}

#[tokio::test]
async fn without_a_configured_database_the_suite_runs_its_own_postgres() {
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL runs as an unprivileged user, which must be able to reach the data folder.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data_dir = dir.path().join("suite");
    let mut child = suite().arg("--data-dir").arg(&data_dir).spawn().unwrap();
    let _guard = KillOnDrop(child.id());
    let (listening, lines) = wait_until_up(&mut child);
    assert_all_serving(&listening).await;
    let pg_data = data_dir.join("postgres").join("pgdata");
    assert!(
        pg_data.join("PG_VERSION").exists(),
        "the data folder is kept"
    );

    terminate(&child);
    let status = child.wait().unwrap();
    let output = rest_of_output(&mut child, lines);
    assert!(status.success(), "exit {status}: {output}");
    assert!(
        !pg_data.join("postmaster.pid").exists(),
        "PostgreSQL was stopped: {output}"
    );
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_key_and_not_the_secret() {
    let output = suite()
        .env(
            "DATABASE_URL",
            "postgres://postgres:hunter2-not-for-logs@127.0.0.1:1/db",
        )
        .env("PORTAL_SERVER__REQUEST_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.request_timeout_ms"), "{stderr}");
    assert!(!stderr.contains("hunter2") && !stdout.contains("hunter2"));

    let output = suite()
        .env(
            "DATABASE_URL",
            "mysql://root:hunter2-not-for-logs@127.0.0.1:1/db",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("database.url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
