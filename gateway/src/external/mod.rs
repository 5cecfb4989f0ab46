//! Resolving secret definitions that point at customers' own secret
//! managers: connections, provider clients, the lookup cache, retries and
//! circuit breakers.

pub mod aws;
pub mod azure;
pub mod cache;
pub mod connection;
pub mod error;
pub mod gcp;
pub mod hashicorp;
pub mod http;
pub mod provider;
pub mod resolver;
pub mod retry;
pub mod store;
pub mod tokens;

use zeroize::Zeroizing;

pub use connection::{ConnectionSpec, HostedCredential, StoredConnection};
pub use error::{FailureKind, ProviderError, CANNOT_ACCESS};

use self::http::HttpClient;
use self::tokens::TokenCache;

/// A value read from a provider, before any `json_key` selection.
pub struct Fetched {
    pub value: Zeroizing<String>,
    /// The provider's id of the version read, when it reports one.
    pub version: Option<String>,
}

/// The context every provider client needs: the HTTP client, the token cache, and
/// the instance-metadata service for AWS credentials, if one is configured.
pub struct ProviderContext {
    pub http: HttpClient,
    pub tokens: TokenCache,
    /// Base URL of the EC2 instance-metadata service (IMDSv2); with `None`
    /// no metadata service is contacted.
    pub aws_metadata: Option<String>,
}
