//! The cluster certificate authority. `cairn cert init` makes a CA; `cairn cert issue` signs a
//! certificate for one namenode, datanode, administrator, mounting host or user. Every peer
//! presents its certificate and accepts only certificates this CA signed; what a peer may do
//! follows from its certificate alone (the namenode's `authz`), never from what it claims.
//!
//! A certificate names its role twice: as a DNS name `<role>.cairn` (what the connecting side
//! verifies, so a mount certificate can never pose as a namenode) and in its common name
//! `<role>/<name>` (what a server reads to know who is calling). A `user` certificate also
//! carries the uid, gid and groups it acts as, as a URI name `cairn:user?uid=…&gid=…&groups=…`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Namenode,
    Datanode,
    /// Runs `cairn admin` operations; in the namespace it acts as the uid its requests name.
    Admin,
    /// A host that mounts for its local users: its requests name the uid of the process
    /// calling, within what its export rule allows (root squashed by default).
    Mount,
    /// One person: acts as the uid, gid and groups in the certificate, whatever its requests
    /// name.
    User,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Namenode,
        Role::Datanode,
        Role::Admin,
        Role::Mount,
        Role::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Namenode => "namenode",
            Role::Datanode => "datanode",
            Role::Admin => "admin",
            Role::Mount => "mount",
            Role::User => "user",
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
            "admin" => Role::Admin,
            "mount" => Role::Mount,
            "user" => Role::User,
            // What every certificate that was not a server's was called before the roles
            // split: such a certificate mounts, as a mount certificate does.
            "client" => Role::Mount,
            other => {
                bail!("unknown role {other:?}: expected namenode, datanode, admin, mount or user")
            }
        })
    }
}

/// The identity a `user` certificate acts as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
}

const USER_URI: &str = "cairn:user?";

impl UserIds {
    /// `cairn:user?uid=1000&gid=1000&groups=27,100`, the URI name a user certificate carries.
    fn to_uri(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!(
            "{USER_URI}uid={}&gid={}&groups={}",
            self.uid,
            self.gid,
            groups.join(",")
        )
    }

    fn from_uri(uri: &str) -> Option<UserIds> {
        let query = uri.strip_prefix(USER_URI)?;
        let (mut uid, mut gid, mut groups) = (None, None, Vec::new());
        for pair in query.split('&') {
            match pair.split_once('=')? {
                ("uid", v) => uid = Some(v.parse().ok()?),
                ("gid", v) => gid = Some(v.parse().ok()?),
                ("groups", "") => {}
                ("groups", v) => {
                    for g in v.split(',') {
                        groups.push(g.parse().ok()?);
                    }
                }
                _ => return None,
            }
        }
        Some(UserIds {
            uid: uid?,
            gid: gid?,
            groups,
        })
    }
}

impl fmt::Display for UserIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)?;
        if !self.groups.is_empty() {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            write!(f, " groups {}", groups.join(","))?;
        }
        Ok(())
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub role: Role,
    pub name: String,
    /// Present exactly when `role` is [`Role::User`].
    pub ids: Option<UserIds>,
}

impl CertIdentity {
    pub fn new(role: Role, name: &str) -> CertIdentity {
        CertIdentity {
            role,
            name: name.to_string(),
            ids: None,
        }
    }

    pub fn user(name: &str, ids: UserIds) -> CertIdentity {
        CertIdentity {
            role: Role::User,
            name: name.to_string(),
            ids: Some(ids),
        }
    }
}

impl fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)?;
        if let Some(ids) = &self.ids {
            write!(f, " ({ids})")?;
        }
        Ok(())
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
/// written to `out_dir/<name>.pem` and `out_dir/<name>.key`. A user certificate needs its
/// ids: see [`issue_as`].
pub fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    out_dir: &Path,
    days: u32,
) -> anyhow::Result<IssuedPaths> {
    issue_as(ca_dir, &CertIdentity::new(role, name), out_dir, days)
}

/// Issues a certificate for `who`, as [`issue`] does.
pub fn issue_as(
    ca_dir: &Path,
    who: &CertIdentity,
    out_dir: &Path,
    days: u32,
) -> anyhow::Result<IssuedPaths> {
    let name = who.name.as_str();
    if (who.role == Role::User) != who.ids.is_some() {
        bail!("a user certificate, and only one, names the uid and gid it acts as (--uid, --gid)");
    }
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
    sign(ca_dir, who, &paths, days)?;
    Ok(paths)
}

/// Issues the certificate at `cert` again, for the same identity, with a new key (written
/// beside it, `.key`) valid for `days` from now. Returns the identity.
pub fn renew(ca_dir: &Path, cert: &Path, days: u32) -> anyhow::Result<CertIdentity> {
    let (who, _) = read_identity(cert)?;
    let paths = IssuedPaths {
        cert: cert.to_path_buf(),
        key: cert.with_extension("key"),
    };
    sign(ca_dir, &who, &paths, days)?;
    Ok(who)
}

/// The identity and end of validity (seconds since the epoch) of the certificate in the PEM
/// file `cert`.
pub fn read_identity(cert: &Path) -> anyhow::Result<(CertIdentity, i64)> {
    let pem = fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", cert.display()))?;
    let who = peer_identity(&pem.contents)
        .with_context(|| format!("{} is not a Cairn certificate", cert.display()))?;
    let not_after =
        not_after(&pem.contents).with_context(|| format!("{} has no validity", cert.display()))?;
    Ok((who, not_after))
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

/// Signs a certificate for `who` with the CA in `ca_dir` into `paths`.
fn sign(ca_dir: &Path, who: &CertIdentity, paths: &IssuedPaths, days: u32) -> anyhow::Result<()> {
    let (role, name) = (who.role, who.name.as_str());
    let (ca_cert, ca_key) = load_ca(ca_dir)?;
    let key = KeyPair::generate().context("generating key")?;
    let mut params = CertificateParams::new(vec![role.server_name()])
        .context("building certificate parameters")?;
    // A serial of its own, recorded with the CA, so that `revoke` can name it.
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    if let Some(ids) = &who.ids {
        params.subject_alt_names.push(SanType::URI(
            ids.to_uri()
                .try_into()
                .context("encoding the certificate's ids")?,
        ));
    }
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
    let index = ca_dir.join(ISSUED_FILE);
    let line = format!(
        "{}\t{role}\t{name}\t{}\n",
        hex(&serial),
        params_not_after(&cert)
    );
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&index)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("recording the certificate in {}", index.display()))?;
    Ok(())
}

/// The CA in `ca_dir`: its certificate, re-created from its PEM (same name and key, so what
/// it signs chains to the certificate on disk), and its key.
fn load_ca(ca_dir: &Path) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let ca_pem = fs::read_to_string(ca_dir.join(CA_CERT_FILE))
        .with_context(|| format!("reading {}", ca_dir.join(CA_CERT_FILE).display()))?;
    let ca_key_pem = fs::read_to_string(ca_dir.join(CA_KEY_FILE))
        .with_context(|| format!("reading {}", ca_dir.join(CA_KEY_FILE).display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing CA key")?;
    let ca_params =
        CertificateParams::from_ca_cert_pem(&ca_pem).context("parsing CA certificate")?;
    let ca_cert = ca_params.self_signed(&ca_key).context("loading CA")?;
    Ok((ca_cert, ca_key))
}

fn params_not_after(cert: &rcgen::Certificate) -> i64 {
    not_after(cert.der()).unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Every certificate the CA issued, one per line: serial (hex), role, name, end of validity.
pub const ISSUED_FILE: &str = "issued.tsv";
/// The serials revoked so far, one per line: serial (hex), name, when (seconds since the epoch).
const REVOKED_FILE: &str = "revoked.tsv";
/// The revocation list signed by the CA, as the namenode reads it (`crl` in its config).
pub const CRL_FILE: &str = "revoked.pem";

/// Revokes every certificate named `name` the CA in `ca_dir` issued and that has not expired,
/// and writes the CA's revocation list again (`revoked.pem`); returns how many were revoked
/// now. A certificate issued for the name later (`cairn cert issue`) is a new one, and good.
pub fn revoke(ca_dir: &Path, name: &str) -> anyhow::Result<usize> {
    let issued_path = ca_dir.join(ISSUED_FILE);
    let issued = fs::read_to_string(&issued_path).unwrap_or_default();
    let revoked_path = ca_dir.join(REVOKED_FILE);
    let mut revoked = fs::read_to_string(&revoked_path).unwrap_or_default();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut named = 0;
    let mut added = 0;
    for line in issued.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [serial, _role, issued_name, until] = fields[..] else {
            continue;
        };
        if issued_name != name {
            continue;
        }
        named += 1;
        let expired = until.parse::<i64>().is_ok_and(|t| t <= now);
        let already = revoked
            .lines()
            .any(|l| l.split('\t').next() == Some(serial));
        if !expired && !already {
            revoked.push_str(&format!("{serial}\t{name}\t{now}\n"));
            added += 1;
        }
    }
    if named == 0 {
        bail!(
            "no certificate named {name:?} was issued from the CA in {} (its {ISSUED_FILE} lists them)",
            ca_dir.display()
        );
    }
    fs::write(&revoked_path, &revoked)
        .with_context(|| format!("writing {}", revoked_path.display()))?;
    write_crl(ca_dir, &revoked)?;
    Ok(added)
}

/// Signs the revocation list of `revoked` (the lines of `revoked.tsv`) into `revoked.pem`.
fn write_crl(ca_dir: &Path, revoked: &str) -> anyhow::Result<()> {
    let (ca_cert, ca_key) = load_ca(ca_dir)?;
    let mut revoked_certs = Vec::new();
    for line in revoked.lines() {
        let mut fields = line.split('\t');
        let (Some(serial), Some(_), Some(when)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Some(serial), Ok(when)) = (unhex(serial), when.parse::<i64>()) else {
            continue;
        };
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: time::OffsetDateTime::from_unix_timestamp(when)?,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(CA_DAYS.into()),
        crl_number: SerialNumber::from(now.unix_timestamp() as u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca_cert, &ca_key)
    .context("signing the revocation list")?;
    let path = ca_dir.join(CRL_FILE);
    fs::write(&path, crl.pem()?).with_context(|| format!("writing {}", path.display()))
}

/// The serials a revocation list (PEM, as `cairn cert revoke` writes it) revokes, once its
/// signature is checked against the CA certificate `ca_pem`.
pub fn read_crl(crl_pem: &[u8], ca_pem: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem)
        .map_err(|e| anyhow::anyhow!("the CA certificate is not PEM: {e}"))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca.contents)
        .map_err(|e| anyhow::anyhow!("the CA certificate does not parse: {e}"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(crl_pem)
        .map_err(|e| anyhow::anyhow!("not a PEM revocation list: {e}"))?;
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents)
        .map_err(|e| anyhow::anyhow!("not a revocation list: {e}"))?;
    crl.verify_signature(ca.public_key())
        .map_err(|e| anyhow::anyhow!("the revocation list is not signed by the cluster CA: {e}"))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| r.serial().to_bytes_be())
        .collect())
}

/// A DER certificate's serial number, as [`read_crl`] gives revoked ones.
pub fn serial_of(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.serial.to_bytes_be())
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

/// Reads who a peer's certificate names: the role and name in its common name
/// `<role>/<name>`, and a user's ids. `None` for a certificate that is not Cairn's, or a user
/// certificate without its ids.
pub fn peer_identity(cert_der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let (role, name) = cn.split_once('/')?;
    let role: Role = role.parse().ok()?;
    let ids = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => UserIds::from_uri(uri),
            _ => None,
        });
    if (role == Role::User) != ids.is_some() {
        return None;
    }
    Some(CertIdentity {
        role,
        name: name.to_string(),
        ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_last_as_long_as_asked_and_renew_as_themselves() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), CA_DAYS).unwrap();
        let ids = UserIds {
            uid: 1000,
            gid: 100,
            groups: vec![27, 44],
        };
        let alice = CertIdentity::user("alice", ids);
        let paths = issue_as(dir.path(), &alice, dir.path(), 30).unwrap();
        let (who, until) = read_identity(&paths.cert).unwrap();
        assert_eq!(who, alice);
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

        // Renewed: the same identity, a new key, a new end.
        assert_eq!(renew(dir.path(), &paths.cert, CERT_DAYS).unwrap(), alice);
        let (_, renewed) = read_identity(&paths.cert).unwrap();
        assert!(renewed > until + 300 * 86_400);
        assert_ne!(fs::read(&paths.key).unwrap(), key);

        // None at all: expired, refused with what to do.
        let lapsed = issue(dir.path(), Role::Mount, "bob", dir.path(), 0).unwrap();
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

        // A user certificate without ids, or ids on another role, is not issued.
        assert!(issue(dir.path(), Role::User, "carol", dir.path(), 1).is_err());
        let mut admin = CertIdentity::new(Role::Admin, "root");
        admin.ids = alice.ids.clone();
        assert!(issue_as(dir.path(), &admin, dir.path(), 1).is_err());
    }

    #[test]
    fn a_revoked_name_lists_every_certificate_of_it_and_only_the_ca_may_sign_the_list() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), CA_DAYS).unwrap();
        let der = |p: &Path| {
            let pem = fs::read(p).unwrap();
            x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
        };
        let first = issue(dir.path(), Role::Mount, "laptop", dir.path(), 30).unwrap();
        let first_serial = serial_of(&der(&first.cert)).unwrap();
        let renewed = renew(dir.path(), &first.cert, 30).unwrap();
        assert_eq!(renewed.name, "laptop");
        let second_serial = serial_of(&der(&first.cert)).unwrap();
        let other = issue(dir.path(), Role::Mount, "desk", dir.path(), 30).unwrap();
        assert_ne!(first_serial, second_serial);

        assert_eq!(revoke(dir.path(), "laptop").unwrap(), 2);
        assert_eq!(revoke(dir.path(), "laptop").unwrap(), 0, "already revoked");
        let err = revoke(dir.path(), "nobody").unwrap_err().to_string();
        assert!(err.contains("no certificate named"), "{err}");
        let crl = fs::read(dir.path().join(CRL_FILE)).unwrap();
        let ca = fs::read(dir.path().join(CA_CERT_FILE)).unwrap();
        let mut revoked = read_crl(&crl, &ca).unwrap();
        revoked.sort();
        let mut expected = vec![first_serial, second_serial];
        expected.sort();
        assert_eq!(revoked, expected);
        assert!(!revoked.contains(&serial_of(&der(&other.cert)).unwrap()));

        // Issued anew after the revocation: a new certificate, not on the list.
        let again = issue(dir.path(), Role::Mount, "laptop", dir.path(), 30).unwrap();
        assert!(!revoked.contains(&serial_of(&der(&again.cert)).unwrap()));

        // A list another CA signed is not believed.
        let foreign = tempfile::tempdir().unwrap();
        init_ca(foreign.path(), CA_DAYS).unwrap();
        issue(foreign.path(), Role::Mount, "x", foreign.path(), 1).unwrap();
        revoke(foreign.path(), "x").unwrap();
        let forged = fs::read(foreign.path().join(CRL_FILE)).unwrap();
        let err = read_crl(&forged, &ca).unwrap_err().to_string();
        assert!(err.contains("not signed by the cluster CA"), "{err}");
        assert!(read_crl(b"junk", &ca).is_err());
    }

    #[test]
    fn user_ids_read_back_as_written_and_nothing_else_reads_as_ids() {
        for groups in [vec![], vec![0], vec![27, 100, u32::MAX]] {
            let ids = UserIds {
                uid: 1000,
                gid: 0,
                groups,
            };
            assert_eq!(UserIds::from_uri(&ids.to_uri()), Some(ids));
        }
        for bad in [
            "cairn:user?uid=1&gid=x",
            "cairn:user?uid=1",
            "cairn:user?gid=1&groups=1",
            "cairn:user?uid=1&gid=2&root=1",
            "cairn:user?uid=-1&gid=2",
            "cairn:user?uid=1&gid=2&groups=1,,2",
            "https://example.com",
        ] {
            assert_eq!(UserIds::from_uri(bad), None, "{bad}");
        }
        assert_eq!("client".parse::<Role>().unwrap(), Role::Mount);
    }
}
