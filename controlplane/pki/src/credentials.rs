//! Credentials as the bootstrap endpoints hand them out, and the kubeconfig they make.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// What `/strake/v1/kubeconfig` and `/strake/v1/node-credentials` return: the CA to trust and a
/// client certificate (and, for nodes, a serving certificate for the node's own API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub server: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_key_pem: Option<String>,
}

impl Credentials {
    /// A kubeconfig (YAML) using these credentials against `server_url`.
    pub fn kubeconfig(&self, cluster: &str, server_url: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {cluster}-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {cluster}-admin\n    namespace: default\ncurrent-context: {cluster}\npreferences: {{}}\n",
            ca = b64(&self.ca_pem),
            cert = b64(&self.cert_pem),
            key = b64(&self.key_pem),
        )
    }
}
