//! Outgoing gRPC calls: every call a service makes to another goes through an [`Outgoing`]
//! channel, so each one carries the W3C trace context of the work that caused it and a
//! credential: the service's own SERVICE token, or the token of the caller being served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::Kind;
use crate::auth::keys::{TokenSigner, now};
use crate::auth::layer::current_caller;
use crate::telemetry;
use crate::tls::TlsSettings;

/// A channel whose calls carry trace context and credentials.
pub type OutgoingChannel = InterceptedService<Channel, OutgoingContext>;

/// On whose behalf calls on a channel are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBehalfOf {
    /// The service itself (relays, sweepers, checks the call graph makes as a service).
    Service,
    /// The caller whose request is being served, forwarding their token. Outside a request
    /// (a spawned task, a stream body polled later) there is no caller and the call goes out
    /// without a token, to be refused: never with the service's own, broader, authority.
    /// Spawned work on a caller's behalf re-enters `auth::layer::serve_as`.
    Caller,
}

/// The service's own SERVICE token, minted when first needed and renewed before it expires.
#[derive(Debug)]
pub struct ServiceToken {
    signer: Arc<TokenSigner>,
    subject: String,
    ttl_secs: i64,
    current: Mutex<Option<(String, i64)>>,
}

impl ServiceToken {
    /// Tokens with subject `services/<service>`.
    pub fn new(signer: Arc<TokenSigner>, service: &str, ttl_secs: i64) -> Self {
        Self {
            signer,
            subject: format!("services/{service}"),
            ttl_secs,
            current: Mutex::new(None),
        }
    }

    /// A token valid for at least another third of its lifetime.
    pub fn token(&self) -> String {
        let now = now();
        let Ok(mut current) = self.current.lock() else {
            return self.mint().0;
        };
        match &*current {
            Some((token, exp)) if exp - now > self.ttl_secs / 3 => token.clone(),
            _ => {
                let (token, exp) = self.mint();
                *current = Some((token.clone(), exp));
                token
            }
        }
    }

    fn mint(&self) -> (String, i64) {
        self.signer
            .mint(Kind::Service, &self.subject, None, &[], self.ttl_secs)
    }
}

/// Adds what every outgoing call must carry.
#[derive(Debug, Clone)]
pub struct OutgoingContext {
    on_behalf_of: OnBehalfOf,
    service_token: Option<Arc<ServiceToken>>,
}

impl tonic::service::Interceptor for OutgoingContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        telemetry::inject_current(request.metadata_mut());
        let token = match self.on_behalf_of {
            OnBehalfOf::Caller => current_caller().map(|caller| caller.token().to_owned()),
            OnBehalfOf::Service => self.service_token.as_ref().map(|t| t.token()),
        };
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::internal("token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// How this process makes outgoing calls: built once, shared by every client it creates.
#[derive(Debug, Clone)]
pub struct Outgoing {
    service_token: Option<Arc<ServiceToken>>,
    timeout: Duration,
    tls: TlsSettings,
}

impl Outgoing {
    pub fn new(
        service_token: Option<Arc<ServiceToken>>,
        timeout: Duration,
        tls: TlsSettings,
    ) -> Self {
        Self {
            service_token,
            timeout,
            tls,
        }
    }

    /// `scheme://host:port` for a peer, `https` when this process calls over TLS.
    pub fn uri(&self, host: &str, port: u16) -> String {
        format!("{}://{host}:{port}", crate::tls::scheme(&self.tls))
    }

    /// The URI of the service called `name` (`consent`, ...): its configured `endpoint`, else
    /// this machine at the port it listens on (development, where the suite runs on one host).
    pub fn peer_uri(
        &self,
        settings: &crate::config::Settings,
        name: &str,
    ) -> anyhow::Result<String> {
        let (listen, endpoint) = settings
            .service(name)
            .ok_or_else(|| anyhow::anyhow!("no configuration section `{name}`"))?;
        Ok(match endpoint {
            Some(endpoint) => endpoint.to_owned(),
            None => self.uri("127.0.0.1", listen.port()),
        })
    }

    /// A lazily connecting channel to `uri` (see [`Outgoing::uri`]); a dead peer surfaces as
    /// `UNAVAILABLE` on the call, not as a start-up failure. With `tls.ca_file` set the peer's
    /// certificate must match the URI's host, and `tls.cert_file` is presented for mutual TLS.
    pub fn channel(&self, uri: &str, on_behalf_of: OnBehalfOf) -> anyhow::Result<OutgoingChannel> {
        let mut endpoint = Endpoint::from_shared(uri.to_owned())?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        let host = endpoint
            .uri()
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        if let Some(tls) = crate::tls::client_config(&self.tls, &host)? {
            // tonic would silently ignore TLS on an http:// URI.
            anyhow::ensure!(
                endpoint.uri().scheme_str() == Some("https"),
                "tls.ca_file is set, so `{uri}` must be an https:// URI"
            );
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect_lazy();
        Ok(InterceptedService::new(
            channel,
            OutgoingContext {
                on_behalf_of,
                service_token: self.service_token.clone(),
            },
        ))
    }
}

/// The `ErrorInfo.reason` of a status another service answered with ("" if none).
pub fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// What a failed call to `service` means to our own caller, when the caller cannot act on the
/// answer itself: a peer that cannot be reached is `UNAVAILABLE` (`DEPENDENCY_UNAVAILABLE`,
/// metadata `service`), safe to retry; any other answer means we asked wrongly, which is
/// logged and reported as `INTERNAL`.
pub fn dependency_failure(service: &str, status: &tonic::Status) -> crate::ApiError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            tracing::warn!(service, code = ?status.code(), "a service this one depends on is unreachable");
            crate::ApiError::unavailable(
                "DEPENDENCY_UNAVAILABLE",
                format!("the {service} service is unavailable; retry (with the same request_id)"),
            )
            .with_metadata("service", service)
        }
        code => {
            let reason = error_reason(status);
            tracing::error!(
                service,
                ?code,
                reason,
                "a service this one depends on refused the call"
            );
            crate::ApiError::internal(format!("{service} service answered {code:?} ({reason})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{Authenticator, KeySet, generate_key, parse_private_key};
    use crate::auth::layer::serve_as;
    use crate::auth::token::Expectations;
    use tonic::service::Interceptor;

    fn authorization(context: &mut OutgoingContext) -> Option<String> {
        let request = context.call(tonic::Request::new(())).unwrap();
        request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn calls_carry_the_service_token_or_forward_the_callers() {
        let (private, _) = generate_key();
        let signer = Arc::new(TokenSigner::new(
            "k1",
            parse_private_key(&private).unwrap(),
            "portal/jp".to_owned(),
        ));
        let service_token = Arc::new(ServiceToken::new(Arc::clone(&signer), "approval", 300));
        let mut keys = KeySet::default();
        keys.insert("k1", signer.verifying_key(), &[Kind::User, Kind::Service]);
        let auth = Authenticator::new(
            keys,
            Expectations {
                audience: "portal/jp".to_owned(),
                max_lifetime_secs: 3600,
                clock_skew_secs: 60,
            },
        );
        let (user_token, _) =
            signer.mint(Kind::User, "tenants/t/users/u", Some("tenants/t"), &[], 300);
        let user = auth
            .authenticate(Some(&format!("Bearer {user_token}")))
            .unwrap();

        let mut as_service = OutgoingContext {
            on_behalf_of: OnBehalfOf::Service,
            service_token: Some(Arc::clone(&service_token)),
        };
        let mut as_caller = OutgoingContext {
            on_behalf_of: OnBehalfOf::Caller,
            service_token: Some(service_token),
        };

        let own = authorization(&mut as_service).unwrap();
        let own_caller = auth.authenticate(Some(&own)).unwrap();
        assert_eq!(own_caller.kind, Kind::Service);
        assert_eq!(own_caller.subject, "services/approval");

        let (forwarded, serviced) = serve_as(user, async {
            (
                authorization(&mut as_caller),
                authorization(&mut as_service),
            )
        })
        .await;
        assert_eq!(forwarded.unwrap(), format!("Bearer {user_token}"));
        assert_eq!(
            serviced.unwrap(),
            own,
            "a Service channel never forwards the user's token"
        );
        // With no request being served, a Caller channel sends no token rather than the
        // service's own: it fails closed.
        assert_eq!(authorization(&mut as_caller), None);
    }
}
