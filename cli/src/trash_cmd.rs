//! `cairn fs trash` and `cairn fs restore`: what removed files wait in the trash, and
//! putting them back.

use anyhow::anyhow;
use cairn_client::Client;
use cairn_common::proto::{ListTrash, Restore, TrashEntry, TRASH_DIR, TRASH_PAGE_MAX};
use cairn_common::FsError;

use crate::fs_cmd::at;

/// Lists the caller's trash, or everyone's with `all` (root), a page at a time: a trash of
/// a million files lists as it is read, in bounded memory (JSON: one array, streamed).
pub async fn list(client: &Client, all: bool, json: bool) -> anyhow::Result<()> {
    let mut after = None;
    let mut listed = 0u64;
    loop {
        let page = client
            .namenode(ListTrash {
                all,
                after: after.take(),
                limit: TRASH_PAGE_MAX,
            })
            .await
            .map_err(|e| anyhow!("trash: {e}"))?;
        for e in &page.entries {
            if json {
                let sep = if listed == 0 { "[\n" } else { ",\n" };
                print!("{sep}{}", serde_json::to_string(e)?);
            } else {
                if listed == 0 {
                    println!(
                        "{:<20} {:>10} {:>6}  {:<40} ENTRY",
                        "REMOVED", "SIZE", "BY", "FROM"
                    );
                }
                println!(
                    "{:<20} {:>10} {:>6}  {:<40} {}",
                    removed(e),
                    bytesize::ByteSize(e.size).to_string(),
                    e.origin.as_ref().map_or("?".into(), |o| o.by.to_string()),
                    e.from.as_deref().unwrap_or("(its directory is gone)"),
                    String::from_utf8_lossy(&e.name)
                );
            }
            listed += 1;
        }
        match page.entries.last() {
            Some(last) if page.more => after = Some((last.dir, last.name.clone())),
            _ => break,
        }
    }
    if json {
        println!("{}", if listed == 0 { "[]" } else { "\n]" });
    } else if listed == 0 {
        println!("The trash is empty.");
    } else {
        println!("{listed} files. Restore with `cairn fs restore ENTRY [--to PATH]`.");
    }
    Ok(())
}

fn removed(e: &TrashEntry) -> String {
    e.origin
        .as_ref()
        .and_then(|o| chrono_like(o.removed.secs))
        .unwrap_or_else(|| "?".into())
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time.
fn chrono_like(secs: i64) -> Option<String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Puts `entry` (a name in the caller's trash, or a path under `/.trash`) back where it was
/// removed from, or at `to`.
pub async fn restore(client: &Client, entry: &str, to: Option<&str>) -> anyhow::Result<()> {
    let path = if entry.starts_with('/') {
        entry.to_string()
    } else {
        format!(
            "/{}/{}/{entry}",
            String::from_utf8_lossy(TRASH_DIR),
            client.caller().uid
        )
    };
    let (dir, name) = client.resolve_parent(&path).await.map_err(at(&path))?;
    let to = match to {
        Some(to) => {
            let (parent, name) = client.resolve_parent(to).await.map_err(at(to))?;
            Some((parent.ino, name.as_bytes().to_vec()))
        }
        None => None,
    };
    let res = client
        .namenode(Restore {
            parent: dir.ino,
            name: name.as_bytes().to_vec(),
            to,
        })
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(FsError::Exists) => Err(anyhow!(
            "{entry}: a file of that name is back in its place already; give --to PATH"
        )),
        Err(FsError::NotFound) => Err(anyhow!("{entry}: not in the trash (see `cairn fs trash`)")),
        Err(e) => Err(anyhow!("{entry}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_times_read_as_utc_dates() {
        assert_eq!(super::chrono_like(0).unwrap(), "1970-01-01 00:00:00");
        assert_eq!(
            super::chrono_like(1_795_000_000).unwrap(),
            "2026-11-18 11:06:40"
        );
    }
}
