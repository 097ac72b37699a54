//! The cluster's certificates (one CA, made with `openssl`), the service
//! account key pair, and kubeconfigs for each client.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;

use super::layout::{Layout, CLUSTER_DOMAIN, KUBERNETES_SERVICE_IP, UNDERLAY_GATEWAY};
use crate::netns::check;

/// Days the certificates are valid: a test cluster lives for hours.
const VALID_DAYS: &str = "30";

/// A client or server certificate: `<pki>/<name>.crt` and `.key`.
#[derive(Clone, Debug)]
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The cluster's PKI under `<state>/pki`.
#[derive(Clone, Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn at(layout: &Layout) -> Pki {
        Pki { dir: layout.pki() }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> Cert {
        Cert {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        }
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// Makes the CA, the service account keys and the certificates of the
    /// control plane, the administrator and every node.
    pub fn generate(&self, nodes: &[String]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            VALID_DAYS,
            "-subj",
            "/CN=trellis-kube-ca",
            "-keyout",
            path(&self.ca_key()),
            "-out",
            path(&self.ca()),
        ])
        .context("making the cluster CA")?;
        openssl(&["genrsa", "-out", path(&self.sa_key()), "2048"])?;
        openssl(&[
            "rsa",
            "-in",
            path(&self.sa_key()),
            "-pubout",
            "-out",
            path(&self.sa_pub()),
        ])?;

        let mut sans = vec![
            format!("IP:{UNDERLAY_GATEWAY}"),
            format!("IP:{}", Ipv4Addr::LOCALHOST),
            format!("IP:{KUBERNETES_SERVICE_IP}"),
            "DNS:localhost".to_owned(),
        ];
        for name in [
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            format!("kubernetes.default.svc.{CLUSTER_DOMAIN}"),
        ] {
            sans.push(format!("DNS:{name}"));
        }
        self.sign("apiserver", "/CN=kube-apiserver", Some(&sans.join(",")))?;
        // The API server's client certificate towards the kubelets.
        self.sign(
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            None,
        )?;
        self.sign("admin", "/O=system:masters/CN=kubernetes-admin", None)?;
        self.sign(
            "controller-manager",
            "/CN=system:kube-controller-manager",
            None,
        )?;
        self.sign("scheduler", "/CN=system:kube-scheduler", None)?;
        self.sign("kube-proxy", "/CN=system:kube-proxy", None)?;
        for node in nodes {
            self.sign(
                &format!("kubelet-{node}"),
                &format!("/O=system:nodes/CN=system:node:{node}"),
                None,
            )?;
        }
        Ok(())
    }

    fn sign(&self, name: &str, subject: &str, sans: Option<&str>) -> Result<()> {
        let Cert { cert, key } = self.cert(name);
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            path(&key),
            "-out",
            path(&csr),
        ])?;
        let mut extensions = String::from(
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        );
        if let Some(sans) = sans {
            extensions.push_str(&format!("subjectAltName={sans}\n"));
        }
        std::fs::write(&ext, extensions)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.ca()),
            "-CAkey",
            path(&self.ca_key()),
            "-CAcreateserial",
            "-days",
            VALID_DAYS,
            "-extfile",
            path(&ext),
            "-out",
            path(&cert),
        ])
        .with_context(|| format!("signing the certificate of {name}"))?;
        std::fs::remove_file(csr)?;
        std::fs::remove_file(ext)?;
        Ok(())
    }

    /// Writes a kubeconfig for the client certificate `name` that reaches
    /// the API server at `server` (`https://host:port`). JSON is YAML, which
    /// is what every Kubernetes client reads.
    pub fn write_kubeconfig(&self, file: &Path, name: &str, server: &str) -> Result<()> {
        let cert = self.cert(name);
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "trellis-kube", "cluster": {
                "server": server,
                "certificate-authority": self.ca(),
            }}],
            "users": [{"name": name, "user": {
                "client-certificate": cert.cert,
                "client-key": cert.key,
            }}],
            "contexts": [{"name": "trellis-kube", "context": {
                "cluster": "trellis-kube", "user": name,
            }}],
            "current-context": "trellis-kube",
        });
        std::fs::write(file, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", file.display()))
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (install it: scripts/setup.sh)")?;
    check(&out)
        .map(|_| ())
        .with_context(|| format!("openssl {}", args.first().unwrap_or(&"")))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("state paths are UTF-8")
}
