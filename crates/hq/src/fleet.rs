//! The fleet at a glance: every store with its gateway's retained `online`/`offline` status
//! (its software version, and its report: backlog, devices in error, config, key set and member
//! versions in force, [`phygate_proto::status`]), read from the broker, beside what the journey
//! store knows of it: its last event, its highest seq and its losses (the seq accounting of
//! [`crate::seq`]).
//! Shown by `phygate-hq stores` as a table, and as `/stores`, a small HTML page with no external
//! assets, on the status listener.
//!
//! Each view reads both sources afresh, briefly: the retained statuses are what the broker
//! sends a new subscriber, so the view needs no state of its own and cannot drift from the
//! broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use phygate_proto::status::{Report, Status};

use crate::control::mqtt::Link;
use crate::seq::GatewaySeq;

/// How long the broker's retained statuses get to arrive once it has been quiet.
const RETAINED_QUIET: Duration = Duration::from_millis(400);

/// Where the view reads from.
#[derive(Debug, Clone)]
pub struct Source {
    /// `host:port` of the MQTT broker the stores publish their retained statuses to; `None`
    /// with the JetStream input and no `[mqtt]` (the view then shows the journey store alone).
    pub broker: Option<String>,
    /// The `[mqtt]` input's TLS and login, for that broker.
    pub security: crate::mqtt_security::Security,
    /// The SQLite journey store; `None` with PostgreSQL, which this view does not read yet
    /// (it then shows the broker's statuses alone).
    pub store_path: Option<PathBuf>,
}

impl Source {
    /// The broker and journey store of an HQ config.
    pub fn of(config: &crate::config::Config) -> Source {
        Source {
            broker: match &config.input {
                crate::input::Input::Mqtt(m) => Some(format!("{}:{}", m.host, m.port)),
                crate::input::Input::JetStream(_) => None,
            },
            security: match &config.input {
                crate::input::Input::Mqtt(m) => m.security.clone(),
                crate::input::Input::JetStream(_) => Default::default(),
            },
            store_path: match &config.store.backend {
                crate::config::StoreBackend::Sqlite { path, .. } => Some(path.clone()),
                crate::config::StoreBackend::Postgres(_) => None,
            },
        }
    }
}

/// One store's line.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StoreRow {
    pub tenant: String,
    pub store: String,
    /// `online` / `offline` as the gateway last said (its Last Will when it vanished), `None`
    /// when the broker holds no status for it.
    pub status: Option<String>,
    /// Since when, as the gateway wrote it.
    pub since: Option<String>,
    /// The gateway's software version.
    pub version: Option<String>,
    /// Gateways of this store seen by the journey store.
    pub gateways: Vec<String>,
    /// Time and type of the last event stored (by commit order).
    pub last_event: Option<String>,
    pub last_seq: Option<u64>,
    /// Seq numbers missing past the grace time and never announced as evicted.
    pub lost: u64,
    /// Seq numbers missing, still within the grace time.
    pub pending: u64,
    /// The last config from HQ the store answered about: its version and `applied` or
    /// `rejected` (from its `store.config.applied` / `store.config.rejected` events).
    pub config: Option<String>,
    /// The status's report, as the store last sent it; `None`: no report (its Last Will, or a
    /// gateway without reports).
    pub report: Option<Report>,
    /// Seconds since the oldest event of the reported backlog was made, at this view.
    pub backlog_age_s: Option<u64>,
}

/// The fleet view: the broker's statuses joined with the journey store's accounting.
pub async fn view(source: &Source) -> anyhow::Result<Vec<StoreRow>> {
    let mut rows: BTreeMap<(String, String), StoreRow> = BTreeMap::new();
    let mut statuses = Vec::new();
    if let Some(broker) = &source.broker {
        let mut link = Link::connect(broker, &source.security).await?;
        statuses = link
            .retained(
                &format!("{}/+/+/status", phygate_proto::topic::ROOT),
                RETAINED_QUIET,
            )
            .await?;
        link.close().await;
    }
    for p in statuses {
        let Some((tenant, store)) = status_topic(&p.topic) else {
            continue;
        };
        let row = row(&mut rows, tenant, store);
        match serde_json::from_slice::<Status>(&p.payload) {
            Ok(s) => {
                row.backlog_age_s = s
                    .report
                    .as_ref()
                    .and_then(|r| r.backlog.as_ref())
                    .and_then(|b| age_s(&b.oldest));
                row.status = Some(s.state);
                row.since = Some(s.since);
                row.version = Some(s.version);
                row.report = s.report;
            }
            Err(_) => row.status = Some("?".into()),
        }
    }
    if let Some(path) = source.store_path.clone().filter(|p| p.exists()) {
        let stored = tokio::task::spawn_blocking(move || from_journey_store(&path)).await??;
        for (tenant, store, gateway, seq, last, config) in stored {
            let row = row(&mut rows, &tenant, &store);
            row.gateways.push(gateway);
            row.lost += seq.lost();
            row.pending += seq.pending();
            row.last_seq = row.last_seq.max(seq.span.map(|s| s.1));
            row.last_event = row.last_event.clone().max(last);
            if config.is_some() {
                row.config = config;
            }
        }
    }
    Ok(rows.into_values().collect())
}

fn row<'a>(
    rows: &'a mut BTreeMap<(String, String), StoreRow>,
    tenant: &str,
    store: &str,
) -> &'a mut StoreRow {
    rows.entry((tenant.to_owned(), store.to_owned()))
        .or_insert_with(|| StoreRow {
            tenant: tenant.to_owned(),
            store: store.to_owned(),
            ..StoreRow::default()
        })
}

/// Seconds from an RFC 3339 time to now.
fn age_s(time: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    let ms = chrono::Utc::now()
        .signed_duration_since(t)
        .num_milliseconds();
    Some(u64::try_from(ms).unwrap_or(0) / 1000)
}

/// `(tenant, store)` of a status topic.
fn status_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic
        .strip_prefix(phygate_proto::topic::ROOT)?
        .strip_prefix('/')?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(s), Some("status"), None) => Some((t, s)),
        _ => None,
    }
}

type Stored = (
    String,
    String,
    String,
    GatewaySeq,
    Option<String>,
    Option<String>,
);

/// Each gateway's accounting and last event, read-only beside a running consumer (WAL).
fn from_journey_store(path: &Path) -> anyhow::Result<Vec<Stored>> {
    use crate::store::JourneyStore;
    let mut store =
        crate::store::sqlite::SqliteStore::open(path, crate::store::sqlite::Synchronous::Normal)
            .with_context(|| format!("opening the journey store {}", path.display()))?;
    let gateways = store.load_gateways()?;
    // Read directly: the journey store's trait has no "last event" query, and this view is
    // the only reader of it. The (gw, id) index narrows it to the gateway's own events.
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut last = conn.prepare(
        "SELECT e.time || ' ' || e.type FROM events e JOIN gateways g USING (gw) \
         WHERE g.tenant = ?1 AND g.store = ?2 AND g.gateway = ?3 ORDER BY e.n DESC LIMIT 1",
    )?;
    let mut config = conn.prepare(
        "SELECT e.type, e.body FROM events e JOIN gateways g USING (gw) \
         WHERE g.tenant = ?1 AND g.store = ?2 AND g.gateway = ?3 \
         AND e.type IN ('store.config.applied', 'store.config.rejected') ORDER BY e.n DESC LIMIT 1",
    )?;
    let mut out = Vec::new();
    for (key, seq) in gateways {
        let ids = [&key.tenant, &key.store, &key.gateway];
        let last: Option<String> = last.query_row(ids, |r| r.get(0)).ok();
        let config = config
            .query_row(ids, |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .ok()
            .map(|(kind, body)| config_answer(&kind, &body));
        out.push((key.tenant, key.store, key.gateway, seq, last, config));
    }
    Ok(out)
}

/// `sha256:… applied` from a config answer's event.
fn config_answer(kind: &str, body: &str) -> String {
    let event: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let version = event["data"]["version"].as_str().unwrap_or("?");
    let verdict = kind.rsplit('.').next().unwrap_or(kind);
    format!("{version} {verdict}")
}

/// The view as a fixed-width text table, one store a line.
pub fn table(rows: &[StoreRow]) -> String {
    let head = [
        "TENANT",
        "STORE",
        "STATUS",
        "SINCE",
        "VERSION",
        "LAST EVENT",
        "LAST SEQ",
        "LOST",
        "PENDING",
        "CONFIG",
        "BACKLOG",
        "DEVICES IN ERROR",
        "KEYS",
        "MEMBERS",
    ];
    let cells: Vec<[String; COLUMNS]> = rows
        .iter()
        .map(|r| cells(r).map(|(text, _)| text))
        .collect();
    let mut widths = head.map(str::len);
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: &[String]| {
        let padded: Vec<String> = c
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&head.map(str::to_owned));
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

const COLUMNS: usize = 14;

/// Each column's text, and for the page the number it sorts by when the text is not one.
fn cells(r: &StoreRow) -> [(String, Option<u64>); COLUMNS] {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let text = |s: String| (s, None);
    let report = r.report.as_ref();
    let backlog = match (report, r.backlog_age_s) {
        (None, _) => text("-".into()),
        (Some(rep), Some(age)) => (
            format!(
                "{age} s ({} events)",
                rep.backlog.as_ref().map_or(0, |b| b.events)
            ),
            Some(age),
        ),
        (Some(_), None) => ("none".into(), Some(0)),
    };
    let devices = match report {
        None => text("-".into()),
        Some(rep) if rep.devices_in_error.is_empty() => ("none".into(), Some(0)),
        Some(rep) => (
            rep.devices_in_error
                .iter()
                .map(|d| format!("{} {}: {}", d.device, d.state, d.reason))
                .collect::<Vec<_>>()
                .join("; "),
            Some(rep.devices_in_error.len() as u64),
        ),
    };
    let keys = match report.map(|rep| &rep.keys) {
        None => "-".into(),
        Some(None) => "none from HQ".into(),
        Some(Some(k)) => format!("{} {}", k.kids.join(","), k.version),
    };
    let members = report.map_or("-".into(), |rep| {
        format!("store {}, all {}", rep.members.store, rep.members.all)
    });
    [
        text(r.tenant.clone()),
        text(r.store.clone()),
        text(r.status.clone().unwrap_or_else(|| "unknown".into())),
        text(dash(&r.since)),
        text(dash(&r.version)),
        text(dash(&r.last_event)),
        text(r.last_seq.map_or("-".into(), |s| s.to_string())),
        text(r.lost.to_string()),
        text(r.pending.to_string()),
        text(config_cell(r)),
        backlog,
        devices,
        text(keys),
        text(members),
    ]
}

/// The config in force as the report says (`local`: the store's own file), and the last
/// answer from the events when it was a rejection; without a report, the last answer alone.
fn config_cell(r: &StoreRow) -> String {
    let answer = r.config.as_deref();
    match r.report.as_ref().map(|rep| rep.config.as_deref()) {
        None => answer.unwrap_or("-").to_owned(),
        Some(in_force) => {
            let in_force = in_force.unwrap_or("local");
            match answer {
                Some(a) if a.ends_with("rejected") => format!("{in_force} (last answer: {a})"),
                _ => in_force.to_owned(),
            }
        }
    }
}

/// The view as a self-contained HTML page: inline style, and a few lines of inline script
/// that sort the table by the clicked column (numbers as numbers), or by column N on load for
/// `#sort=N`.
pub fn html(rows: &[StoreRow]) -> String {
    let mut body = String::new();
    for r in rows {
        let c = cells(r);
        let class = match (r.status.as_deref(), r.lost) {
            (_, lost) if lost > 0 => "loss",
            (Some("online"), _) => "online",
            _ => "offline",
        };
        let mut class = class.to_owned();
        if r.report
            .as_ref()
            .is_some_and(|rep| !rep.devices_in_error.is_empty())
        {
            class.push_str(" deverr");
        }
        if r.backlog_age_s.is_some() {
            class.push_str(" backlog");
        }
        body.push_str(&format!("<tr class=\"{class}\">"));
        for (cell, sort) in c {
            match sort {
                Some(n) => body.push_str(&format!("<td data-sort=\"{n}\">{}</td>", escape(&cell))),
                None => body.push_str(&format!("<td>{}</td>", escape(&cell))),
            }
        }
        body.push_str("</tr>\n");
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>phygate fleet</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: .3em .8em; white-space: nowrap; border-bottom: 1px solid #ddd; text-align: left; }}
th {{ cursor: pointer; background: #f4f4f4; }}
tr.offline td:nth-child(3) {{ color: #b00; font-weight: bold; }}
tr.online td:nth-child(3) {{ color: #070; }}
tr.loss td:nth-child(8) {{ color: #fff; background: #b00; }}
tr.backlog td:nth-child(11), tr.deverr td:nth-child(12) {{ color: #fff; background: #c60; }}
</style></head><body>
<h1>Fleet: {n} stores, {online} online, {lossy} with losses, {deverr} with devices in error, {backlogged} with a backlog</h1>
<table id="fleet"><thead><tr><th>tenant</th><th>store</th><th>status</th><th>since</th><th>version</th><th>last event</th><th>last seq</th><th>lost</th><th>pending</th><th>config</th><th>backlog</th><th>devices in error</th><th>keys</th><th>members</th></tr></thead>
<tbody>
{body}</tbody></table>
<script>
document.querySelectorAll('#fleet th').forEach((th, i) => th.onclick = () => {{
  const tb = document.querySelector('#fleet tbody');
  const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
  const key = tr => {{ const c = tr.children[i]; const t = c.dataset.sort ?? c.textContent; const n = Number(t); return isNaN(n) ? t : n; }};
  [...tb.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1))
    .forEach(tr => tb.appendChild(tr));
}});
// `#sort=N`: a link (or a bookmark) to the table sorted by column N.
const m = location.hash.match(/^#sort=(\d+)$/);
if (m) document.querySelectorAll('#fleet th')[Number(m[1])]?.click();
</script>
</body></html>
"#,
        n = rows.len(),
        online = rows
            .iter()
            .filter(|r| r.status.as_deref() == Some("online"))
            .count(),
        lossy = rows.iter().filter(|r| r.lost > 0).count(),
        deverr = rows
            .iter()
            .filter(|r| r
                .report
                .as_ref()
                .is_some_and(|rep| !rep.devices_in_error.is_empty()))
            .count(),
        backlogged = rows.iter().filter(|r| r.backlog_age_s.is_some()).count(),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_page_show_each_store() {
        let rows = vec![
            StoreRow {
                tenant: "acme".into(),
                store: "paris-01".into(),
                status: Some("online".into()),
                lost: 0,
                ..StoreRow::default()
            },
            StoreRow {
                tenant: "acme".into(),
                store: "<lyon>".into(),
                status: Some("offline".into()),
                lost: 3,
                ..StoreRow::default()
            },
        ];
        let t = table(&rows);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(2).unwrap().contains("offline"), "{t}");
        let h = html(&rows);
        assert!(
            h.contains("&lt;lyon&gt;") && !h.contains("<lyon>"),
            "escaped"
        );
        assert!(h.contains("2 stores, 1 online, 1 with losses, 0 with devices in error"));
        assert!(
            !h.contains("http://") && !h.contains("https://"),
            "no external assets"
        );
        assert_eq!(
            status_topic("phygate/v1/acme/s1/status"),
            Some(("acme", "s1"))
        );
        assert_eq!(status_topic("phygate/v1/acme/s1/events"), None);
    }
}
