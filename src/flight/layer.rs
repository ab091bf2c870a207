//! The one place every RPC's credential is checked: a tower layer in front of the Flight
//! service. A call without a valid bearer token never reaches a handler; a call with one reaches
//! it with the [`Principal`] in its extensions. The handshake is the only exception, since it
//! is how a token is obtained; it checks its basic credentials itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use super::metrics::{Metrics, Refusal};
use crate::flight::auth::{Authenticator, Principal};

/// The gRPC path of the Flight handshake.
pub(crate) const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// Checks bearer tokens in front of a service.
#[derive(Clone)]
pub(crate) struct AuthLayer {
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        Self { auth, metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps.
#[derive(Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if request.uri().path() != HANDSHAKE_PATH {
            match self.auth.authenticate_bearer(request.headers()) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(status) => {
                    self.metrics.refused(Refusal::Unauthenticated);
                    tracing::info!(
                        target: "pitlake::flight",
                        path = request.uri().path(),
                        reason = status.message(),
                        "call refused: unauthenticated"
                    );
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        }
        // The clone has not been polled ready; the service that has is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

/// The principal the layer authenticated. Its absence is a wiring bug; the call is refused
/// rather than served without a user.
pub(crate) fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credential"))
}
