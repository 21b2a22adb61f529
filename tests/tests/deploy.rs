//! The Kubernetes deployment (`deploy/`): every region's overlay, rendered with
//! `kubectl kustomize` as an operator applies it, keeps the rules `docs/operations.md` and
//! `docs/architecture.md` state. Each overlay names its own region, country, operating entity,
//! database and secrets, and nobody else's; every service runs at least two replicas behind
//! native gRPC health probes, with a disruption budget, a migration job run as its owner role
//! and a locked-down pod; and the NetworkPolicies allow exactly the calls the services make.
//! The keys files `docs/operations.md` shows load, and their tokens verify.
//! `deploy/check` validates the same renderings against the Kubernetes schemas.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use portal_platform::ServiceDef;
use portal_platform::auth::Kind;
use portal_platform::auth::keys::{
    Authenticator, TokenSigner, audience, generate_key, parse_private_key,
};
use portal_platform::config::{Settings, random_secret_key};
use portal_platform::names::{is_country, is_region};
use portal_tests::ALL_SERVICES;
use serde_yaml_ng::{Mapping, Value};

/// One regional deployment, as its overlay (`deploy/overlays/<name>/region.yaml`) must set it.
#[derive(Debug)]
struct Region {
    name: &'static str,
    /// ISO 3166-1 alpha-2, as `deployment.country` and the transfer registry require.
    country: &'static str,
    operating_entity: &'static str,
    database_host: &'static str,
    database_name: &'static str,
    database_cidr: &'static str,
}

const REGIONS: [Region; 4] = [
    Region {
        name: "jp",
        country: "JP",
        operating_entity: "NTT Communications Corporation",
        database_host: "postgres-jp.portal.internal",
        database_name: "portal_jp",
        database_cidr: "10.10.0.0/24",
    },
    Region {
        name: "us",
        country: "US",
        operating_entity: "NTT America, Inc.",
        database_host: "postgres-us.portal.internal",
        database_name: "portal_us",
        database_cidr: "10.20.0.0/24",
    },
    Region {
        name: "uk",
        country: "GB",
        operating_entity: "NTT Europe Ltd.",
        database_host: "postgres-uk.portal.internal",
        database_name: "portal_uk",
        database_cidr: "10.30.0.0/24",
    },
    Region {
        name: "sg",
        country: "SG",
        operating_entity: "NTT Singapore Pte. Ltd.",
        database_host: "postgres-sg.portal.internal",
        database_name: "portal_sg",
        database_cidr: "10.40.0.0/24",
    },
];

/// The calls the services make to one another, (caller, callee), read from the code: each
/// is a client of `libs/clients` that a service constructs.
/// - identity → consent: `services/identity/src/api.rs` builds `Consent` (RecordConsent on
///   registration, activation and sign-in; WithdrawConsent on deletion; ListConsentRecords
///   for ExportUserData).
/// - identity → transfer: the same file builds `Transfer` (ListSubjectRecipients and
///   ListTransferRecords for ExportUserData).
/// - approval → identity: `services/approval/src/api.rs` builds `Identity` (GetTenant for
///   each request's tenant profiles) and `workers.rs` consumes WatchUserEvents (deletions).
/// - transfer → identity: `services/transfer/src/api.rs` builds `Identity` and hands it to
///   `workers.rs`, which consumes WatchUserEvents (deletions).
/// - transfer → consent: `services/transfer/src/api.rs` builds `Consent` (CheckConsent).
///
/// Consent builds no client: it calls no one, and no service calls approval.
const CALLS: [(&str, &str); 5] = [
    ("identity", "consent"),
    ("identity", "transfer"),
    ("approval", "identity"),
    ("transfer", "identity"),
    ("transfer", "consent"),
];

/// Where the callers from outside the suite live, and the metrics scrape port
/// (`telemetry.metrics_listen`).
const PORTAL_INGRESS_NAMESPACE: &str = "portal-web";
const METRICS_PORT: i64 = 9464;

/// What the base leaves for the overlays to fill in (`deploy/components/region`).
const PLACEHOLDERS: [&str; 7] = [
    "REGION",
    "COUNTRY",
    "OPERATING_ENTITY",
    "DATABASE_HOST",
    "DATABASE_NAME",
    "DATABASE_CIDR",
    "BACKUP_RETENTION_DAYS",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// One overlay as `kubectl kustomize` renders it: the text and its documents.
#[derive(Debug)]
struct Rendering {
    text: String,
    docs: Vec<Value>,
}

fn render(region: &str) -> Rendering {
    let overlay = repo_root().join("deploy/overlays").join(region);
    let output = match Command::new("kubectl")
        .arg("kustomize")
        .arg(&overlay)
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run kubectl ({e}): these tests render deploy/overlays/{region} with \
             `kubectl kustomize`; install kubectl (1.27 or newer has kustomize built in)"
        ),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        overlay.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("the rendering is UTF-8");
    // kubectl separates documents with `---` lines; inside a document such a line would be
    // indented.
    let mut docs = Vec::new();
    let mut document = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line == "---" {
            let doc: Value = serde_yaml_ng::from_str(&document).expect("kubectl renders YAML");
            if !doc.is_null() {
                docs.push(doc);
            }
            document.clear();
        } else {
            document.push_str(line);
            document.push('\n');
        }
    }
    Rendering { text, docs }
}

/// Every overlay, rendered once for all the tests of this file.
fn renderings() -> &'static BTreeMap<&'static str, Rendering> {
    static RENDERINGS: OnceLock<BTreeMap<&'static str, Rendering>> = OnceLock::new();
    RENDERINGS.get_or_init(|| {
        REGIONS
            .iter()
            .map(|region| (region.name, render(region.name)))
            .collect()
    })
}

fn each_overlay() -> impl Iterator<Item = (&'static Region, &'static Rendering)> {
    REGIONS
        .iter()
        .map(|region| (region, &renderings()[region.name]))
}

// ---- reading the YAML --------------------------------------------------------------------

/// The value at a dotted path of mapping keys (`spec.template.spec`), if every step exists.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |value, key| value.as_mapping()?.get(key))
}

fn str_at<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn seq_at<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn kind(doc: &Value) -> &str {
    str_at(doc, "kind").unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    str_at(doc, "metadata.name").unwrap_or_default()
}

fn of_kind<'a>(rendering: &'a Rendering, wanted: &str) -> Vec<&'a Value> {
    rendering
        .docs
        .iter()
        .filter(|doc| kind(doc) == wanted)
        .collect()
}

fn find<'a>(rendering: &'a Rendering, wanted_kind: &str, wanted_name: &str) -> &'a Value {
    rendering
        .docs
        .iter()
        .find(|doc| kind(doc) == wanted_kind && name(doc) == wanted_name)
        .unwrap_or_else(|| panic!("no {wanted_kind} {wanted_name} in the rendering"))
}

/// A mapping of strings (labels, ConfigMap data) as a map.
fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|mapping| {
            mapping
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                    };
                    (k.as_str().unwrap_or_default().to_owned(), text)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Deployments and Jobs: the workloads whose pods run the service binaries.
fn workloads(rendering: &Rendering) -> Vec<&Value> {
    rendering
        .docs
        .iter()
        .filter(|doc| matches!(kind(doc), "Deployment" | "Job"))
        .collect()
}

fn pod_spec(workload: &Value) -> &Value {
    at(workload, "spec.template.spec").expect("a workload has a pod template")
}

fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    string_map(at(workload, "spec.template.metadata.labels"))
}

fn containers(workload: &Value) -> &[Value] {
    seq_at(pod_spec(workload), "containers")
}

fn deployment<'a>(rendering: &'a Rendering, def: &ServiceDef) -> &'a Value {
    find(rendering, "Deployment", def.name)
}

fn migration_job<'a>(rendering: &'a Rendering, def: &ServiceDef) -> &'a Value {
    find(rendering, "Job", &format!("{}-migrate", def.name))
}

/// The one container of a service's pod.
fn only_container(workload: &Value) -> &Value {
    let all = containers(workload);
    assert_eq!(all.len(), 1, "{} runs one container", name(workload));
    &all[0]
}

/// The gRPC port each service listens on, from the compiled-in defaults.
fn grpc_port(def: &ServiceDef) -> i64 {
    let settings = Settings::load_from(None, HashMap::new()).unwrap();
    i64::from(settings.service(def.name).unwrap().0.port())
}

/// What a secret reference resolves to in these tests: a URL-safe stand-in, like the hex
/// passwords `docs/operations.md` tells operators to generate.
const SECRET_STAND_IN: &str = "0123456789abcdef";

/// The environment a container starts with, as the kubelet builds it: `envFrom` ConfigMaps
/// first (each must be in the rendering), then `env` in order, `$(VAR)` expanded from what is
/// defined so far. Secret values are [`SECRET_STAND_IN`]; downward-API values are
/// `fieldRef:<path>`.
fn environment(rendering: &Rendering, container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in seq_at(container, "envFrom") {
        let config_map = str_at(source, "configMapRef.name")
            .expect("envFrom only from ConfigMaps (secrets are referenced one key at a time)");
        env.extend(string_map(at(
            find(rendering, "ConfigMap", config_map),
            "data",
        )));
    }
    for var in seq_at(container, "env") {
        let key = str_at(var, "name").unwrap().to_owned();
        let value = if let Some(value) = str_at(var, "value") {
            expand(value, &env)
        } else if at(var, "valueFrom.secretKeyRef").is_some() {
            SECRET_STAND_IN.to_owned()
        } else if let Some(path) = str_at(var, "valueFrom.fieldRef.fieldPath") {
            format!("fieldRef:{path}")
        } else {
            panic!("{key}: an env var with neither a value, a secret nor a field reference")
        };
        env.insert(key, value);
    }
    env
}

/// Kubernetes' `$(VAR)` expansion: a reference to a variable not yet defined stays as it is.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) if env.contains_key(&after[..end]) => {
                out.push_str(&env[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The secrets a workload's pod reads: `secretKeyRef`s and secret volumes.
fn secrets_referenced(workload: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for container in containers(workload) {
        for var in seq_at(container, "env") {
            if let Some(secret) = str_at(var, "valueFrom.secretKeyRef.name") {
                names.insert(secret.to_owned());
            }
        }
    }
    for volume in seq_at(pod_spec(workload), "volumes") {
        if let Some(secret) = str_at(volume, "secret.secretName") {
            names.insert(secret.to_owned());
        }
    }
    names
}

/// ConfigMaps a workload's pod mounts as volumes (not in the rendering: created per region).
fn config_map_volumes(workload: &Value) -> BTreeSet<String> {
    seq_at(pod_spec(workload), "volumes")
        .iter()
        .filter_map(|volume| str_at(volume, "configMap.name"))
        .map(str::to_owned)
        .collect()
}

/// A setting from the pod's security context, overridden by the container's.
fn security<'a>(workload: &'a Value, container: &'a Value, key: &str) -> Option<&'a Value> {
    at(container, &format!("securityContext.{key}"))
        .or_else(|| at(pod_spec(workload), &format!("securityContext.{key}")))
}

// ---- the region's identity ----------------------------------------------------------------

#[test]
fn each_overlay_sets_its_own_region_country_and_operating_entity_in_every_config_and_workload() {
    for (region, rendering) in each_overlay() {
        let config_maps = of_kind(rendering, "ConfigMap");
        assert_eq!(
            config_maps.len(),
            5,
            "{}: four services and portal-region",
            region.name
        );
        for config_map in config_maps {
            let data = string_map(at(config_map, "data"));
            let (r, c, e) = if name(config_map) == "portal-region" {
                ("region", "country", "operating-entity")
            } else {
                (
                    "PORTAL_DEPLOYMENT__REGION",
                    "PORTAL_DEPLOYMENT__COUNTRY",
                    "PORTAL_DEPLOYMENT__OPERATING_ENTITY",
                )
            };
            let what = format!("{}: ConfigMap {}", region.name, name(config_map));
            assert_eq!(data.get(r).map(String::as_str), Some(region.name), "{what}");
            assert_eq!(
                data.get(c).map(String::as_str),
                Some(region.country),
                "{what}"
            );
            assert_eq!(
                data.get(e).map(String::as_str),
                Some(region.operating_entity),
                "{what}"
            );
        }

        let workloads = workloads(rendering);
        assert_eq!(
            workloads.len(),
            8,
            "{}: a Deployment and a Job per service",
            region.name
        );
        for workload in workloads {
            let what = format!("{}: {} {}", region.name, kind(workload), name(workload));
            let instance = format!("portal-{}", region.name);
            assert_eq!(
                pod_labels(workload).get("app.kubernetes.io/instance"),
                Some(&instance),
                "{what}: its pods carry the region's instance label"
            );
            for container in containers(workload) {
                let env = environment(rendering, container);
                let get = |key: &str| env.get(key).map(String::as_str);
                assert_eq!(
                    get("PORTAL_DEPLOYMENT__REGION"),
                    Some(region.name),
                    "{what}"
                );
                assert_eq!(
                    get("PORTAL_DEPLOYMENT__COUNTRY"),
                    Some(region.country),
                    "{what}"
                );
                assert_eq!(
                    get("PORTAL_DEPLOYMENT__OPERATING_ENTITY"),
                    Some(region.operating_entity),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn every_container_starts_with_a_configuration_the_binaries_accept() {
    for (region, rendering) in each_overlay() {
        for workload in workloads(rendering) {
            for container in containers(workload) {
                let what = format!("{}: {} {}", region.name, kind(workload), name(workload));
                let env: HashMap<String, String> =
                    environment(rendering, container).into_iter().collect();
                // The same loader as the binaries: an unknown key or a bad value fails here.
                let settings =
                    Settings::load_from(None, env).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(settings.deployment.region, region.name, "{what}");
                assert_eq!(settings.deployment.country, region.country, "{what}");
                assert!(
                    is_country(&settings.deployment.country),
                    "{what}: ISO 3166-1 alpha-2, as the transfer registry checks"
                );
                assert!(!settings.database.assume_roles, "{what}: production roles");
                assert!(settings.database.url.is_some(), "{what}: database.url");
                assert!(
                    settings.telemetry.otlp_endpoint.is_some(),
                    "{what}: traces and metrics go to the collector"
                );
            }
        }
    }
}

#[test]
fn country_codes_are_iso_3166_alpha_2_so_the_united_kingdom_is_gb() {
    for region in &REGIONS {
        assert!(is_region(region.name), "{}", region.name);
        assert!(
            is_country(region.country),
            "{}: {}",
            region.name,
            region.country
        );
    }
    assert!(!is_country("UK"), "UK is not an ISO 3166-1 code");
    let uk = REGIONS.iter().find(|r| r.name == "uk").unwrap();
    assert_eq!(uk.country, "GB");
}

#[test]
fn each_overlay_references_its_own_database_and_secrets() {
    for (region, rendering) in each_overlay() {
        let prefix = format!("portal-{}", region.name);
        let database = format!(
            "@{}:5432/{}?sslmode=verify-full&",
            region.database_host, region.database_name
        );
        for def in ALL_SERVICES {
            let server = deployment(rendering, def);
            let env = environment(rendering, only_container(server));
            let url = &env["PORTAL_DATABASE__URL"];
            let what = format!("{}: {}", region.name, def.name);
            assert!(
                url.starts_with(&format!("postgres://{}_app:", def.name)),
                "{what}: the server connects as its app role: {url}"
            );
            assert!(
                url.contains(&database),
                "{what}: the region's database: {url}"
            );
            assert_eq!(
                secrets_referenced(server),
                BTreeSet::from([
                    format!("{prefix}-{}-keys", def.name),
                    format!("{prefix}-{}-db-app", def.name),
                ]),
                "{what}: the server reads its keys and the app role's password, nothing else"
            );
            assert_eq!(
                config_map_volumes(server),
                BTreeSet::from([format!("{prefix}-postgres-ca")]),
                "{what}"
            );

            let job = migration_job(rendering, def);
            let env = environment(rendering, only_container(job));
            let url = &env["PORTAL_DATABASE__MIGRATION_URL"];
            assert!(
                url.contains(&database),
                "{what}: the region's database: {url}"
            );
            assert_eq!(
                secrets_referenced(job),
                BTreeSet::from([format!("{prefix}-{}-db-owner", def.name)]),
                "{what}: the migration job reads the owner role's password, nothing else"
            );
            assert_eq!(
                config_map_volumes(job),
                BTreeSet::from([format!("{prefix}-postgres-ca")]),
                "{what}"
            );
        }
        let postgres = find(rendering, "NetworkPolicy", "allow-postgres");
        let cidrs: Vec<&str> = seq_at(postgres, "spec.egress")
            .iter()
            .flat_map(|rule| seq_at(rule, "to"))
            .filter_map(|peer| str_at(peer, "ipBlock.cidr"))
            .collect();
        assert_eq!(cidrs, [region.database_cidr], "{}", region.name);
    }
}

/// Lower-case words of a text: what is left between the characters that are not letters or
/// digits. Short codes (`us`, `uk`) are compared as whole words, never as substrings.
fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

#[test]
fn no_overlay_mentions_another_regions_region_country_entity_or_database() {
    for (region, rendering) in each_overlay() {
        let words = words(&rendering.text);
        for other in REGIONS.iter().filter(|other| other.name != region.name) {
            let what = format!("the {} rendering names {}'s", region.name, other.name);
            assert!(!words.contains(other.name), "{what} region");
            assert!(
                !words.contains(&other.country.to_ascii_lowercase()),
                "{what} country {}",
                other.country
            );
            for text in [
                other.operating_entity,
                other.database_host,
                other.database_name,
                other.database_cidr,
            ] {
                assert!(!rendering.text.contains(text), "{what} {text}");
            }
        }
    }
}

/// Every string value of a document, keys aside.
fn string_values<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Sequence(items) => items.iter().for_each(|item| string_values(item, out)),
        Value::Mapping(mapping) => mapping.values().for_each(|v| string_values(v, out)),
        _ => {}
    }
}

#[test]
fn no_placeholder_of_the_base_survives_in_an_overlay() {
    for (region, rendering) in each_overlay() {
        let mut values = Vec::new();
        rendering
            .docs
            .iter()
            .for_each(|doc| string_values(doc, &mut values));
        for value in values {
            assert!(
                !PLACEHOLDERS.contains(&value) && !value.contains("-REGION-"),
                "{}: placeholder left in {value:?}",
                region.name
            );
        }
    }
}

// ---- the workloads ------------------------------------------------------------------------

#[test]
fn every_service_runs_two_or_more_replicas_behind_native_grpc_health_probes() {
    for (region, rendering) in each_overlay() {
        assert_eq!(of_kind(rendering, "Deployment").len(), ALL_SERVICES.len());
        for def in ALL_SERVICES {
            let what = format!("{}: {}", region.name, def.name);
            let server = deployment(rendering, def);
            let replicas = at(server, "spec.replicas").and_then(Value::as_i64);
            assert!(replicas >= Some(2), "{what}: replicas {replicas:?}");

            let container = only_container(server);
            let port = grpc_port(def);
            let ports: BTreeMap<String, i64> = seq_at(container, "ports")
                .iter()
                .map(|p| {
                    (
                        str_at(p, "name").unwrap().to_owned(),
                        at(p, "containerPort").and_then(Value::as_i64).unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                ports,
                BTreeMap::from([
                    ("grpc".to_owned(), port),
                    ("metrics".to_owned(), METRICS_PORT)
                ]),
                "{what}"
            );
            // grpc.health.v1 on the serving port: "" (the server) or the service's own name,
            // the two names the platform reports (libs/platform/src/server.rs).
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let grpc = at(container, &format!("{probe}.grpc"))
                    .unwrap_or_else(|| panic!("{what}: {probe} is a native gRPC probe"));
                assert_eq!(
                    at(grpc, "port").and_then(Value::as_i64),
                    Some(port),
                    "{what}"
                );
                let service = str_at(grpc, "service").unwrap_or_default();
                assert!(
                    service.is_empty() || service == def.grpc_service,
                    "{what}: {probe} asks for {service:?}"
                );
            }
            assert_eq!(
                str_at(container, "readinessProbe.grpc.service"),
                Some(def.grpc_service),
                "{what}: readiness asks for the service by name"
            );
            let pre_stop = at(container, "lifecycle.preStop.sleep.seconds")
                .and_then(Value::as_i64)
                .unwrap_or_else(|| panic!("{what}: a preStop sleep lets endpoints drain"));
            let grace = at(pod_spec(server), "terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap();
            let settings = Settings::load_from(None, HashMap::new()).unwrap();
            let shutdown_grace = i64::try_from(settings.server.shutdown_grace_ms / 1000).unwrap();
            assert!(
                grace > pre_stop + shutdown_grace,
                "{what}: the kubelet waits for the sleep and the server's drain"
            );

            let service = find(rendering, "Service", def.name);
            assert_eq!(
                string_map(at(service, "spec.selector")),
                string_map(at(server, "spec.selector.matchLabels")),
                "{what}: the Service selects the Deployment's pods"
            );
            let service_ports = seq_at(service, "spec.ports");
            assert_eq!(service_ports.len(), 1, "{what}");
            assert_eq!(
                at(&service_ports[0], "port").and_then(Value::as_i64),
                Some(port)
            );
            assert_eq!(str_at(&service_ports[0], "targetPort"), Some("grpc"));
        }
    }
}

#[test]
fn every_deployment_has_a_disruption_budget_that_keeps_a_replica_serving() {
    for (region, rendering) in each_overlay() {
        let budgets = of_kind(rendering, "PodDisruptionBudget");
        for server in of_kind(rendering, "Deployment") {
            let what = format!("{}: {}", region.name, name(server));
            let labels = pod_labels(server);
            let matching: Vec<_> = budgets
                .iter()
                .filter(|pdb| {
                    let selector = string_map(at(pdb, "spec.selector.matchLabels"));
                    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
                .collect();
            assert_eq!(matching.len(), 1, "{what}: one PodDisruptionBudget");
            let replicas = at(server, "spec.replicas").and_then(Value::as_i64).unwrap();
            let budget = matching[0];
            let keeps = match (
                at(budget, "spec.maxUnavailable").and_then(Value::as_i64),
                at(budget, "spec.minAvailable").and_then(Value::as_i64),
            ) {
                (Some(max_unavailable), None) => replicas - max_unavailable,
                (None, Some(min_available)) => min_available,
                other => panic!("{what}: a budget as a number of pods, not {other:?}"),
            };
            assert!(
                keeps >= 1 && keeps < replicas,
                "{what}: keeps {keeps} of {replicas} pods during a drain (and lets one go)"
            );
        }
    }
}

#[test]
fn every_pod_runs_non_root_on_a_read_only_root_without_capabilities_or_api_token() {
    for (region, rendering) in each_overlay() {
        for workload in workloads(rendering) {
            let what = format!("{}: {} {}", region.name, kind(workload), name(workload));
            let pod = pod_spec(workload);
            assert_eq!(
                at(pod, "automountServiceAccountToken").and_then(Value::as_bool),
                Some(false),
                "{what}: no Kubernetes API token in the pod"
            );
            let account = str_at(pod, "serviceAccountName").unwrap_or_default();
            let account = find(rendering, "ServiceAccount", account);
            assert_eq!(
                at(account, "automountServiceAccountToken").and_then(Value::as_bool),
                Some(false),
                "{what}: its ServiceAccount mounts no token either"
            );
            for container in containers(workload) {
                let flag = |key: &str| security(workload, container, key).and_then(Value::as_bool);
                assert_eq!(flag("runAsNonRoot"), Some(true), "{what}");
                assert_eq!(flag("readOnlyRootFilesystem"), Some(true), "{what}");
                assert_eq!(flag("allowPrivilegeEscalation"), Some(false), "{what}");
                assert_ne!(
                    security(workload, container, "runAsUser").and_then(Value::as_i64),
                    Some(0),
                    "{what}"
                );
                assert_eq!(
                    security(workload, container, "seccompProfile.type").and_then(Value::as_str),
                    Some("RuntimeDefault"),
                    "{what}"
                );
                let dropped: Vec<&str> = seq_at(container, "securityContext.capabilities.drop")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(dropped, ["ALL"], "{what}: every capability dropped");
                assert!(
                    seq_at(container, "securityContext.capabilities.add").is_empty(),
                    "{what}: none added back"
                );
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            at(container, &format!("resources.{bound}.{resource}")).is_some(),
                            "{what}: resources.{bound}.{resource}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_service_has_a_migration_job_run_as_its_owner_role_and_serves_as_its_app_role() {
    for (region, rendering) in each_overlay() {
        for def in ALL_SERVICES {
            let what = format!("{}: {}", region.name, def.name);
            let server = only_container(deployment(rendering, def));
            let job = migration_job(rendering, def);
            let migrate = only_container(job);
            assert_eq!(
                str_at(migrate, "image"),
                str_at(server, "image"),
                "{what}: the job migrates with the release the servers run"
            );
            let args: Vec<&str> = seq_at(migrate, "args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(args, ["migrate"], "{what}: `<service> migrate`");
            assert_eq!(
                str_at(pod_spec(job), "restartPolicy"),
                Some("Never"),
                "{what}"
            );

            let env = environment(rendering, migrate);
            assert!(
                env["PORTAL_DATABASE__MIGRATION_URL"]
                    .starts_with(&format!("postgres://{}_owner:", def.name)),
                "{what}: migrations run as {}_owner",
                def.name
            );
            let env = environment(rendering, server);
            assert!(
                env["PORTAL_DATABASE__URL"].starts_with(&format!("postgres://{}_app:", def.name)),
                "{what}: the server runs as {}_app",
                def.name
            );
            assert!(
                !env.contains_key("PORTAL_DATABASE__MIGRATION_URL"),
                "{what}: the server cannot migrate (it never holds the owner's password)"
            );
            let args: Vec<&str> = seq_at(server, "args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                args,
                ["--config", "/etc/portal/keys/keys.toml", "serve"],
                "{what}: keys from the mounted secret file"
            );
            let keys_mounted = seq_at(server, "volumeMounts").iter().any(|mount| {
                str_at(mount, "name") == Some("keys")
                    && str_at(mount, "mountPath") == Some("/etc/portal/keys")
            });
            assert!(
                keys_mounted,
                "{what}: the keys secret is mounted where --config reads"
            );
        }
    }
}

// ---- the network ---------------------------------------------------------------------------

/// A pod of the suite: a service's server or its migration job.
#[derive(Debug)]
struct Pod {
    service: String,
    server: bool,
    labels: BTreeMap<String, String>,
}

fn pods(rendering: &Rendering) -> Vec<Pod> {
    workloads(rendering)
        .into_iter()
        .map(|workload| {
            let labels = pod_labels(workload);
            Pod {
                service: labels["app.kubernetes.io/name"].clone(),
                server: kind(workload) == "Deployment",
                labels,
            }
        })
        .collect()
}

/// The pods a label selector picks (matchLabels only; an empty selector picks every pod).
fn selected<'a>(selector: Option<&Value>, pods: &'a [Pod]) -> Vec<&'a Pod> {
    if let Some(selector) = selector {
        assert!(
            at(selector, "matchExpressions").is_none(),
            "these tests read matchLabels selectors only"
        );
    }
    let wanted = string_map(selector.and_then(|s| at(s, "matchLabels")));
    pods.iter()
        .filter(|pod| wanted.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
        .collect()
}

fn ports(rule: &Value) -> BTreeSet<(String, i64)> {
    seq_at(rule, "ports")
        .iter()
        .map(|port| {
            (
                str_at(port, "protocol").unwrap_or("TCP").to_owned(),
                at(port, "port")
                    .and_then(Value::as_i64)
                    .expect("ports by number"),
            )
        })
        .collect()
}

/// What one NetworkPolicy rule allows, for one direction.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Allowed {
    /// A call between two servers of the suite: (caller, callee).
    Call(String, String),
    /// Traffic with something outside the suite: a description of the peer and ports.
    Outside(String),
}

/// Everything the NetworkPolicies of a rendering allow, by direction ("ingress", "egress").
fn allowed(rendering: &Rendering) -> BTreeMap<&'static str, BTreeSet<Allowed>> {
    let pods = pods(rendering);
    let port_of: BTreeMap<&str, i64> = ALL_SERVICES
        .iter()
        .map(|def| (def.name, grpc_port(def)))
        .collect();
    let mut allowed: BTreeMap<&str, BTreeSet<Allowed>> = BTreeMap::new();
    for policy in of_kind(rendering, "NetworkPolicy") {
        let name = name(policy);
        let targets = selected(at(policy, "spec.podSelector"), &pods);
        for (direction, key, peers_key) in [
            ("ingress", "spec.ingress", "from"),
            ("egress", "spec.egress", "to"),
        ] {
            for rule in seq_at(policy, key) {
                let peers = seq_at(rule, peers_key);
                let ports = ports(rule);
                assert!(
                    !peers.is_empty() && !ports.is_empty(),
                    "{name}: a {direction} rule without peers or ports allows too much"
                );
                for peer in peers {
                    let namespace = at(peer, "namespaceSelector");
                    let block = str_at(peer, "ipBlock.cidr");
                    if namespace.is_none() && block.is_none() {
                        // Pods of this namespace: only servers, and only on their gRPC port.
                        let others = selected(at(peer, "podSelector"), &pods);
                        for other in others {
                            for target in &targets {
                                let (caller, callee) = if direction == "ingress" {
                                    (other, *target)
                                } else {
                                    (*target, other)
                                };
                                assert!(
                                    caller.server && callee.server,
                                    "{name}: a call involving a migration job"
                                );
                                assert_eq!(
                                    ports,
                                    BTreeSet::from([(
                                        "TCP".to_owned(),
                                        port_of[callee.service.as_str()]
                                    )]),
                                    "{name}: {} to {} on the callee's gRPC port only",
                                    caller.service,
                                    callee.service
                                );
                                allowed.entry(direction).or_default().insert(Allowed::Call(
                                    caller.service.clone(),
                                    callee.service.clone(),
                                ));
                            }
                        }
                    } else {
                        let mut target_names: Vec<String> = targets
                            .iter()
                            .map(|pod| {
                                let role = if pod.server { "server" } else { "migration" };
                                format!("{}-{role}", pod.service)
                            })
                            .collect();
                        target_names.sort();
                        let peer = match block {
                            Some(cidr) => format!("ipBlock {cidr}"),
                            None => format!(
                                "namespace {:?} pods {:?}",
                                string_map(namespace.and_then(|n| at(n, "matchLabels"))),
                                string_map(at(peer, "podSelector.matchLabels"))
                            ),
                        };
                        allowed
                            .entry(direction)
                            .or_default()
                            .insert(Allowed::Outside(format!(
                                "{} {peer} ports {ports:?}",
                                target_names.join(",")
                            )));
                    }
                }
            }
        }
    }
    allowed
}

#[test]
fn network_policies_allow_exactly_the_calls_the_services_make() {
    let calls: BTreeSet<Allowed> = CALLS
        .iter()
        .map(|(caller, callee)| Allowed::Call((*caller).to_owned(), (*callee).to_owned()))
        .collect();
    for (region, rendering) in each_overlay() {
        let allowed = allowed(rendering);
        for direction in ["ingress", "egress"] {
            let between_services: BTreeSet<&Allowed> = allowed[direction]
                .iter()
                .filter(|a| matches!(a, Allowed::Call(..)))
                .collect();
            assert_eq!(
                between_services,
                calls.iter().collect(),
                "{}: the {direction} policies' service-to-service calls",
                region.name
            );
        }
    }
}

#[test]
fn each_service_is_configured_to_call_exactly_the_services_its_policy_allows() {
    let port_of: BTreeMap<&str, i64> = ALL_SERVICES
        .iter()
        .map(|def| (def.name, grpc_port(def)))
        .collect();
    for (region, rendering) in each_overlay() {
        for def in ALL_SERVICES {
            let env = environment(rendering, only_container(deployment(rendering, def)));
            let endpoints: BTreeMap<String, String> = env
                .into_iter()
                .filter_map(|(key, value)| {
                    let callee = key.strip_prefix("PORTAL_")?.strip_suffix("__ENDPOINT")?;
                    Some((callee.to_ascii_lowercase(), value))
                })
                .collect();
            let expected: BTreeMap<String, String> = CALLS
                .iter()
                .filter(|(caller, _)| *caller == def.name)
                .map(|(_, callee)| {
                    (
                        (*callee).to_owned(),
                        format!("http://{callee}:{}", port_of[callee]),
                    )
                })
                .collect();
            assert_eq!(endpoints, expected, "{}: {}", region.name, def.name);
        }
    }
}

#[test]
fn each_overlay_denies_all_traffic_by_default() {
    for (region, rendering) in each_overlay() {
        let deny_all = of_kind(rendering, "NetworkPolicy")
            .into_iter()
            .any(|policy| {
                let selects_all = at(policy, "spec.podSelector")
                    .and_then(Value::as_mapping)
                    .is_some_and(Mapping::is_empty);
                let types: BTreeSet<&str> = seq_at(policy, "spec.policyTypes")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                selects_all
                    && types == BTreeSet::from(["Ingress", "Egress"])
                    && seq_at(policy, "spec.ingress").is_empty()
                    && seq_at(policy, "spec.egress").is_empty()
            });
        assert!(deny_all, "{}: a default-deny NetworkPolicy", region.name);
    }
}

#[test]
fn traffic_with_the_outside_is_only_dns_postgres_otlp_metrics_and_the_portal_ingress() {
    let servers = "approval-server,consent-server,identity-server,transfer-server";
    let every_pod = "approval-migration,approval-server,consent-migration,consent-server,\
                     identity-migration,identity-server,transfer-migration,transfer-server";
    let grpc_ports: Vec<String> = ALL_SERVICES
        .iter()
        .map(|def| format!("(\"TCP\", {})", grpc_port(def)))
        .collect();
    for (region, rendering) in each_overlay() {
        let allowed = allowed(rendering);
        let outside = |direction: &str| -> BTreeSet<String> {
            allowed[direction]
                .iter()
                .filter_map(|a| match a {
                    Allowed::Outside(text) => Some(text.clone()),
                    Allowed::Call(..) => None,
                })
                .collect()
        };
        let namespace = |name: &str| format!("{{\"kubernetes.io/metadata.name\": \"{name}\"}}");
        assert_eq!(
            outside("ingress"),
            BTreeSet::from([
                format!(
                    "{servers} namespace {} pods {{}} ports {{{}}}",
                    namespace(PORTAL_INGRESS_NAMESPACE),
                    grpc_ports.join(", ")
                ),
                format!(
                    "{servers} namespace {} pods {{\"app.kubernetes.io/name\": \"prometheus\"}} \
                     ports {{(\"TCP\", {METRICS_PORT})}}",
                    namespace("monitoring")
                ),
            ]),
            "{}: ingress from outside the suite",
            region.name
        );
        assert_eq!(
            outside("egress"),
            BTreeSet::from([
                format!(
                    "{every_pod} namespace {} pods {{\"k8s-app\": \"kube-dns\"}} \
                     ports {{(\"TCP\", 53), (\"UDP\", 53)}}",
                    namespace("kube-system")
                ),
                format!(
                    "{every_pod} ipBlock {} ports {{(\"TCP\", 5432)}}",
                    region.database_cidr
                ),
                format!(
                    "{every_pod} namespace {} pods \
                     {{\"app.kubernetes.io/name\": \"opentelemetry-collector\"}} \
                     ports {{(\"TCP\", 4317)}}",
                    namespace("observability")
                ),
            ]),
            "{}: egress to outside the suite",
            region.name
        );
    }
}

// ---- the images ----------------------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn the_images_build_every_service_package_and_run_it_as_a_non_root_user() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let instructions = dockerfile_instructions(&text);
    let build = instructions
        .iter()
        .find(|i| i.starts_with("RUN") && i.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );

    // Stage name -> its instructions.
    let mut stages: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    let mut current = String::new();
    for instruction in &instructions {
        if let Some(from) = instruction.strip_prefix("FROM ") {
            current = from
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .to_owned();
        }
        stages.entry(current.clone()).or_default().push(instruction);
    }
    assert!(
        stages["runtime"]
            .iter()
            .any(|i| *i == "FROM gcr.io/distroless/cc-debian12:nonroot AS runtime"),
        "the runtime is distroless, nonroot"
    );

    for def in ALL_SERVICES {
        let package = format!("{}-service", def.name);
        // The package and binary exist under that name.
        let manifest =
            std::fs::read_to_string(root.join("services").join(def.name).join("Cargo.toml"))
                .unwrap();
        assert!(
            manifest.contains(&format!("name = \"{package}\"")),
            "services/{}/Cargo.toml names {package}",
            def.name
        );
        assert!(
            build.contains(&format!("-p {package}")),
            "the build compiles {package}"
        );

        let stage = stages
            .get(def.name)
            .unwrap_or_else(|| panic!("a --target {} stage", def.name));
        assert_eq!(
            *stage[0],
            format!("FROM runtime AS {}", def.name),
            "{}: on the runtime stage",
            def.name
        );
        let user = stage
            .iter()
            .filter_map(|i| i.strip_prefix("USER "))
            .next_back()
            .unwrap_or_else(|| panic!("{}: sets USER", def.name));
        let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| {
            panic!(
                "{}: USER {user} is numeric, so runAsNonRoot can check it",
                def.name
            )
        });
        assert_ne!(uid, 0, "{}: not root", def.name);
        assert!(
            stage
                .iter()
                .any(|i| *i == &format!("ENTRYPOINT [\"/usr/local/bin/{package}\"]")),
            "{}: runs {package}",
            def.name
        );

        // The pods run as the image's user, with the image of that stage.
        for (region, rendering) in each_overlay() {
            for workload in [deployment(rendering, def), migration_job(rendering, def)] {
                let container = only_container(workload);
                assert_eq!(
                    security(workload, container, "runAsUser").and_then(Value::as_i64),
                    Some(i64::from(uid)),
                    "{}: {}",
                    region.name,
                    name(workload)
                );
                let image = str_at(container, "image").unwrap();
                assert!(
                    image.starts_with(&format!("registry.example.com/portal/{}:", def.name)),
                    "{}: {image}",
                    region.name
                );
            }
        }
    }

    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(
        ignored.lines().any(|line| line.trim() == "target/"),
        ".dockerignore keeps target/ out of the build context"
    );
}

// ---- the operator's documentation ----------------------------------------------------------

/// The ```toml blocks of `docs/operations.md` that start `# keys.toml for <service>`.
fn documented_keys_files() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let mut files = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line != "```toml" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        if let Some(service) = block
            .first()
            .and_then(|first| first.strip_prefix("# keys.toml for "))
        {
            files.insert(service.to_owned(), block.join("\n") + "\n");
        }
    }
    files
}

/// Fills a documented file's `<...>` placeholders: `<name private key>` and `<name public
/// key>` with one generated Ed25519 key per name, anything else with a random 32-byte key.
fn fill_placeholders(template: &str, keys: &mut BTreeMap<String, (String, String)>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('>').expect("a closed placeholder") + start;
        let placeholder = &rest[start + 1..end];
        let value = if let Some(name) = placeholder.strip_suffix(" private key") {
            let pair = keys.entry(name.to_owned()).or_insert_with(generate_key);
            pair.0.clone()
        } else if let Some(name) = placeholder.strip_suffix(" public key") {
            let pair = keys.entry(name.to_owned()).or_insert_with(generate_key);
            pair.1.clone()
        } else {
            random_secret_key()
        };
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_keys_files_operations_md_shows_are_accepted_and_their_tokens_verify() {
    let files = documented_keys_files();
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        ["consent", "identity"],
        "docs/operations.md shows consent's and identity's keys.toml"
    );
    let mut keys = BTreeMap::new();
    for (service, template) in &files {
        let path = std::env::temp_dir().join(format!(
            "portal-deploy-{}-{service}-keys.toml",
            std::process::id()
        ));
        std::fs::write(&path, fill_placeholders(template, &mut keys)).unwrap();
        let env = HashMap::from([("PORTAL_DEPLOYMENT__REGION".to_owned(), "jp".to_owned())]);
        let loaded = Settings::load_from(Some(&path), env);
        std::fs::remove_file(&path).unwrap();
        let settings = loaded.unwrap_or_else(|e| panic!("{service}'s keys.toml: {e}"));

        // The service's own SERVICE token verifies with the trusted keys it is given.
        let authenticator = Authenticator::from_settings(&settings).unwrap();
        let signer = TokenSigner::from_settings(&settings).unwrap().unwrap();
        let subject = format!("services/{service}");
        let (token, _) = signer.mint(Kind::Service, &subject, None, &[], 300);
        let caller = authenticator
            .authenticate(Some(&format!("Bearer {token}")))
            .unwrap_or_else(|e| panic!("{service}'s own token: {e:?}"));
        assert_eq!(caller.subject, subject);

        if *service == "identity" {
            assert!(!settings.identity.lacks_keys(), "identity's PI keys");
            assert!(settings.identity.current_key_encryption_key.is_some());
        } else {
            // An OPERATOR token as `portal-suite mint-token` signs it: the operators' key under
            // key id portal-suite-dev, for this region.
            let operators = parse_private_key(&keys["operators"].0).unwrap();
            let mint_token = TokenSigner::new("portal-suite-dev", operators, audience(&settings));
            let (token, _) = mint_token.mint(Kind::Operator, "operators/alice", None, &[], 900);
            let caller = authenticator
                .authenticate(Some(&format!("Bearer {token}")))
                .unwrap_or_else(|e| panic!("an operator's token at {service}: {e:?}"));
            assert_eq!(caller.kind, Kind::Operator);
            // Another service's key cannot speak for this one.
            let approval = parse_private_key(&keys["approval"].0).unwrap();
            let (token, _) = TokenSigner::new("approval-jp-2026-11", approval, audience(&settings))
                .mint(Kind::Service, &subject, None, &[], 300);
            assert!(
                authenticator
                    .authenticate(Some(&format!("Bearer {token}")))
                    .is_err(),
                "approval's key signs only for services/approval"
            );
        }
    }
}
