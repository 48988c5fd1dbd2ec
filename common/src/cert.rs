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

/// How long a certificate `cairn cert issue` makes is valid, by default: a year, after
/// which `cairn cert renew` makes it again (a lost laptop's key stops working by itself).
pub const CERT_DAYS: u32 = 365;
/// How long a new cluster CA is valid, by default.
pub const CA_DAYS: u32 = 3650;
/// A daemon warns at start when its certificate expires sooner than this.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

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

/// Valid from an hour ago (clocks differ) for `days` days: none at all is already expired.
fn valid_for(params: &mut CertificateParams, days: u32) {
    // A century at most: X.509 dates end in 9999, and nothing should outlive its keys so.
    let days = days.min(36_500);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days.into());
}

/// Creates a new CA in `dir` (`ca.pem`, `ca.key`), valid for `days`. Refuses to overwrite an
/// existing one: every certificate it signed would stop working.
pub fn init_ca(dir: &Path, days: u32) -> anyhow::Result<()> {
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
    valid_for(&mut params, days);
    let cert = params.self_signed(&key).context("signing CA certificate")?;
    write_private(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}

/// Issues a certificate for `role`/`name` valid for `days`, signed by the CA in `ca_dir`,
/// written to `out_dir/<name>.pem` and `out_dir/<name>.key`.
pub fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    out_dir: &Path,
    days: u32,
) -> anyhow::Result<IssuedPaths> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        bail!("certificate name {name:?} must be letters, digits, '-', '_' or '.'");
    }
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let paths = IssuedPaths {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    sign(ca_dir, role, name, &paths, days)?;
    Ok(paths)
}

/// Issues the certificate at `cert` again, for the same role and name, with a new key
/// (written beside it, `.key`) valid for `days` from now. Returns the role and name.
pub fn renew(ca_dir: &Path, cert: &Path, days: u32) -> anyhow::Result<(Role, String)> {
    let (role, name, _) = read_identity(cert)?;
    let paths = IssuedPaths {
        cert: cert.to_path_buf(),
        key: cert.with_extension("key"),
    };
    sign(ca_dir, role, &name, &paths, days)?;
    Ok((role, name))
}

/// The role, name and end of validity (seconds since the epoch) of the certificate in the
/// PEM file `cert`.
pub fn read_identity(cert: &Path) -> anyhow::Result<(Role, String, i64)> {
    let pem = fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", cert.display()))?;
    let (role, name) = peer_identity(&pem.contents)
        .with_context(|| format!("{} is not a Cairn certificate", cert.display()))?;
    let not_after =
        not_after(&pem.contents).with_context(|| format!("{} has no validity", cert.display()))?;
    Ok((role, name, not_after))
}

/// "expires on 2027-12-07 (365 days from now)", or "expired on … (3 days ago)".
pub fn expiry_text(not_after: i64) -> String {
    let when = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| format!("{not_after} s after the epoch"));
    let left = not_after - time::OffsetDateTime::now_utc().unix_timestamp();
    match left {
        1.. => format!("expires on {when} ({} days from now)", left / 86_400),
        _ => format!("expired on {when} ({} days ago)", -left / 86_400),
    }
}

/// Refuses a certificate that has expired (with how to renew it), and warns of one that
/// expires within [`EXPIRY_WARNING_DAYS`]: a daemon then says so when it starts, not by
/// every connection failing.
pub fn check_expiry(cert_der: &[u8], path: &Path) -> anyhow::Result<()> {
    let Some(not_after) = not_after(cert_der) else {
        bail!("{} has no validity period", path.display());
    };
    let left = not_after - time::OffsetDateTime::now_utc().unix_timestamp();
    if left <= 0 {
        bail!(
            "certificate {} {}: renew it with `cairn cert renew --dir CA_DIR {}`",
            path.display(),
            expiry_text(not_after),
            path.display()
        );
    }
    if left < EXPIRY_WARNING_DAYS * 86_400 {
        tracing::warn!(
            "certificate {} {}: renew it with `cairn cert renew`",
            path.display(),
            expiry_text(not_after)
        );
    }
    Ok(())
}

/// When a DER certificate stops being valid, in seconds since the epoch.
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Signs a certificate for `role`/`name` with the CA in `ca_dir` into `paths`.
fn sign(
    ca_dir: &Path,
    role: Role,
    name: &str,
    paths: &IssuedPaths,
    days: u32,
) -> anyhow::Result<()> {
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
    valid_for(&mut params, days);
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .context("signing certificate")?;
    write_private(&paths.key, key.serialize_pem().as_bytes())?;
    fs::write(&paths.cert, cert.pem())
        .with_context(|| format!("writing {}", paths.cert.display()))?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_last_as_long_as_asked_and_renew_as_themselves() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), CA_DAYS).unwrap();
        let paths = issue(dir.path(), Role::Client, "alice", dir.path(), 30).unwrap();
        let (role, name, until) = read_identity(&paths.cert).unwrap();
        assert_eq!((role, name.as_str()), (Role::Client, "alice"));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((until - (now + 30 * 86_400)).abs() < 60, "30 days from now");
        assert!(
            expiry_text(until).contains("(29 days from now)")
                || expiry_text(until).contains("(30 days")
        );
        let key = fs::read(&paths.key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Renewed: same role and name, a new key, a new end.
        assert_eq!(
            renew(dir.path(), &paths.cert, CERT_DAYS).unwrap(),
            (Role::Client, "alice".to_string())
        );
        let (_, _, renewed) = read_identity(&paths.cert).unwrap();
        assert!(renewed > until + 300 * 86_400);
        assert_ne!(fs::read(&paths.key).unwrap(), key);

        // None at all: expired, refused with what to do.
        let lapsed = issue(dir.path(), Role::Client, "bob", dir.path(), 0).unwrap();
        let pem = fs::read(&lapsed.cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let err = check_expiry(&pem.contents, &lapsed.cert)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expired on") && err.contains("cairn cert renew"),
            "{err}"
        );
        assert!(renew(dir.path(), &dir.path().join("nothing.pem"), 1).is_err());
    }
}
