//! The cluster certificate authority. `cairn cert init` makes a CA; `cairn cert issue` signs a
//! certificate for one namenode, datanode or client. Every peer presents its certificate and
//! accepts only certificates this CA signed: that is the whole of Cairn's authentication.
//!
//! A certificate names its role twice: as a DNS name `<role>.cairn` (what the connecting side
//! verifies, so a client certificate can never pose as a namenode) and in its common name
//! `<role>/<name>` (what a server reads to know who is calling).

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Namenode,
    Datanode,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Namenode => "namenode",
            Role::Datanode => "datanode",
            Role::Client => "client",
        }
    }

    /// The DNS name a certificate of this role carries, and that peers verify.
    pub fn server_name(self) -> String {
        format!("{}.cairn", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Role> {
        Ok(match s {
            "namenode" => Role::Namenode,
            "datanode" => Role::Datanode,
            "client" => Role::Client,
            other => bail!("unknown role {other:?}: expected namenode, datanode or client"),
        })
    }
}

/// Paths of one issued certificate and its key.
#[derive(Clone, Debug)]
pub struct IssuedPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a new CA in `dir` (`ca.pem`, `ca.key`). Refuses to overwrite an existing one:
/// every certificate it signed would stop working.
pub fn init_ca(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert_path = dir.join(CA_CERT_FILE);
    if cert_path.exists() {
        bail!(
            "{} already exists; remove it to start a new cluster CA",
            cert_path.display()
        );
    }
    let key = KeyPair::generate().context("generating CA key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Cairn cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key).context("signing CA certificate")?;
    write_private(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}

/// Issues a certificate for `role`/`name`, signed by the CA in `ca_dir`, written to
/// `out_dir/<name>.pem` and `out_dir/<name>.key`.
pub fn issue(ca_dir: &Path, role: Role, name: &str, out_dir: &Path) -> anyhow::Result<IssuedPaths> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        bail!("certificate name {name:?} must be letters, digits, '-', '_' or '.'");
    }
    let ca_pem = fs::read_to_string(ca_dir.join(CA_CERT_FILE))
        .with_context(|| format!("reading {}", ca_dir.join(CA_CERT_FILE).display()))?;
    let ca_key_pem = fs::read_to_string(ca_dir.join(CA_KEY_FILE))
        .with_context(|| format!("reading {}", ca_dir.join(CA_KEY_FILE).display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing CA key")?;
    // Re-create the CA certificate object from its PEM: same name and key, so what it signs
    // chains to the CA certificate on disk.
    let ca_params =
        CertificateParams::from_ca_cert_pem(&ca_pem).context("parsing CA certificate")?;
    let ca_cert = ca_params.self_signed(&ca_key).context("loading CA")?;

    let key = KeyPair::generate().context("generating key")?;
    let mut params = CertificateParams::new(vec![role.server_name()])
        .context("building certificate parameters")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{}/{}", role.as_str(), name));
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Datanodes and the namenode are both servers and clients of each other.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .context("signing certificate")?;

    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let paths = IssuedPaths {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    write_private(&paths.key, key.serialize_pem().as_bytes())?;
    fs::write(&paths.cert, cert.pem())
        .with_context(|| format!("writing {}", paths.cert.display()))?;
    Ok(paths)
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads the role and name from a peer's certificate (its common name `<role>/<name>`).
pub fn peer_identity(cert_der: &[u8]) -> Option<(Role, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let (role, name) = cn.split_once('/')?;
    Some((role.parse().ok()?, name.to_string()))
}
