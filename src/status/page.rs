//! The staff page: one self-contained HTML document (inline CSS, no script, no fonts or images
//! from elsewhere), so it works with the store offline. It reloads itself every few seconds.

use std::fmt::Write;
use std::time::SystemTime;

use super::board::Shown;
use super::report::{ago, local_time, Report};
use super::verdict::{Level, Part};
use crate::words;

/// Seconds between reloads: fresh enough to watch a device come back after replugging it.
pub const REFRESH_S: u32 = 5;

pub fn render(r: &Report) -> String {
    let now = r.now;
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>{title} — store {store}</title>
<style>{CSS}</style></head>
<body>
<header class="{level}" id="overall" data-verdict="{level}"><h1>{title}</h1>{summary}</header>
<main>
<h2>Devices</h2>
<table id="devices"><thead><tr><th>Device</th><th>Where</th><th>State</th><th>Last reading</th><th>Details</th></tr></thead><tbody>
"#,
        title = match r.verdict.level {
            Level::Ok => "All good",
            Level::Degraded => "Degraded — needs a look",
            Level::Down => "Down — needs attention now",
        },
        store = esc(&r.store),
        level = r.verdict.level,
        summary = summary(r),
    );
    device_rows(&mut h, r);
    h.push_str("</tbody></table>\n<div class=\"cards\">\n");

    // Each card takes its colour from the verdict's reasons about it: never greener or
    // redder than the banner says.
    hq_card(&mut h, r);
    outbox_card(&mut h, r);
    clock_card(&mut h, r);
    let _ = write!(
        h,
        r#"</div></main>
<footer>Gateway {gw} · phygate {version} · running {up} · updated {updated} · this page refreshes every {REFRESH_S} s</footer>
</body></html>
"#,
        gw = esc(&r.gateway),
        version = esc(&r.version),
        up = ago(now, r.started),
        updated = local_time(SystemTime::now()),
    );
    h
}

/// One table row per device.
fn device_rows(h: &mut String, r: &Report) {
    let now = r.now;
    for d in &r.devices {
        let v = &d.view;
        let last = match v.last_reading {
            Some(t) => format!("{} ago<br><small>{}</small>", ago(now, t), local_time(t)),
            None => "never".into(),
        };
        let _ = writeln!(
            h,
            r#"<tr class="device" data-device="{id}" data-state="{state}"><td><b>{id}</b><br><small>{kind}</small></td><td>{station}</td><td><span class="badge {state}">{state}</span></td><td>{last}</td><td>{hint}<br><small>{reason}{optional}</small></td></tr>"#,
            id = esc(&v.id),
            kind = esc(&v.kind),
            station = esc(&v.station),
            state = v.state.as_str(),
            hint = hint(v.state),
            reason = esc(&v.reason),
            optional = if d.required { "" } else { " · not required" },
        );
    }
}

/// The HQ link card.
fn hq_card(h: &mut String, r: &Report) {
    let now = r.now;
    let hq_class = r.verdict.level_of(Part::Hq);
    let hq_state = if r.hq.connected {
        "connected"
    } else {
        "not connected"
    };
    let hq_error = match (&r.hq.last_error, r.hq.last_error_at, r.hq.connected) {
        (Some(e), Some(at), false) => format!(
            "<p><small>Last error {} ago: {}</small></p>",
            ago(now, at),
            esc(e)
        ),
        _ => String::new(),
    };
    let refused = match (&r.hq.refused, r.hq.refused_since) {
        (Some(why), Some(at)) => format!(
            r#"<p id="hq-refused"><small>The broker refuses the events for {}: {} (they stay in the outbox and are sent again)</small></p>"#,
            ago(now, at),
            esc(why)
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        h,
        r#"<section class="card" id="hq" data-state="{hq_class}"><h2>HQ link</h2><p><span class="badge {hq_class}">{hq_state}</span> for {since}</p><p><small>{broker} · {reconnects} reconnect attempts</small></p>{hq_error}{refused}</section>"#,
        since = ago(now, r.hq.since),
        broker = esc(&r.hq.broker),
        reconnects = r.hq.reconnects,
    );
}

/// The card of the events waiting to be sent.
fn outbox_card(h: &mut String, r: &Report) {
    let now = r.now;
    let o = &r.outbox;
    let outbox_class = r.verdict.level_of(Part::Outbox);
    let waiting = match (o.answering, o.writable, o.depth) {
        (false, _, _) => "not answering".to_string(),
        (_, false, _) => "cannot write".to_string(),
        (_, _, Some(0)) => "nothing waiting".to_string(),
        (_, _, Some(n)) => words::count(n as usize, "event", "events") + " waiting",
        (_, _, None) => "starting".to_string(),
    };
    let used = match o.bytes {
        Some(b) => format!(
            "<p><small>{} of the {} quota used</small></p>",
            words::bytes(b),
            words::bytes(o.quota_bytes)
        ),
        None => String::new(),
    };
    let oldest = match o.oldest_unsent {
        Some(t) if o.depth != Some(0) => format!("<p>Oldest unsent: {} ago</p>", ago(now, t)),
        _ => "<p>HQ has everything.</p>".into(),
    };
    let evicted = if o.evicted_total > 0 {
        format!(
            "<p><small>{} events dropped by the storage quota since start</small></p>",
            o.evicted_total
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        h,
        r#"<section class="card" id="outbox" data-state="{outbox_class}"><h2>Events to send</h2><p><span class="badge {outbox_class}">{waiting}</span></p>{oldest}{used}{evicted}</section>"#
    );
}

/// The clock card.
fn clock_card(h: &mut String, r: &Report) {
    // Unknown is no reason in the verdict, and shows grey rather than green.
    let clock_class = match r.clock.synchronized {
        None => "waiting",
        Some(_) => r.verdict.level_of(Part::Clock).as_str(),
    };
    let _ = writeln!(
        h,
        r#"<section class="card" id="clock" data-state="{clock_class}"><h2>Clock</h2><p><span class="badge {clock_class}">{}</span></p><p><small>{}</small></p></section>"#,
        match r.clock.synchronized {
            Some(true) => "synchronized",
            Some(false) => "not synchronized",
            None => "unknown",
        },
        esc(&r.clock.summary()),
    );
}

/// Under the banner: what is fine, or every reason, worst first.
fn summary(r: &Report) -> String {
    if r.verdict.reasons.is_empty() {
        return format!(
            "<p>Store {} — every device is working and HQ gets the data.</p>",
            esc(&r.store)
        );
    }
    let mut h = String::from("<ul id=\"reasons\">");
    for reason in &r.verdict.reasons {
        let _ = write!(
            h,
            r#"<li class="{}">{}</li>"#,
            reason.level,
            esc(&reason.text)
        );
    }
    h.push_str("</ul>");
    h
}

/// What a store employee can do about a state.
fn hint(state: Shown) -> &'static str {
    match state {
        Shown::Ok => "Working.",
        Shown::Silent => "Connected, but nothing read for a while. Try a scan.",
        Shown::Error => {
            "It rejected something recently. Try again; call support if it keeps happening."
        }
        Shown::Unplugged => "Not connected. Check its cable and power.",
        Shown::Waiting => "Not heard from yet.",
    }
}

/// HTML text and attribute escaping.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body{font:18px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
header{padding:1em 1.5em;color:#fff}header h1{margin:0;font-size:2em}header p{margin:.3em 0 0}
header.ok{background:#1e7d3a}header.degraded{background:#b86e00}header.down{background:#b3261e}
header ul{margin:.3em 0 0;padding-left:1.2em}
main{padding:1em 1.5em}h2{margin:.6em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.6em .8em;border-bottom:1px solid #dde;vertical-align:top}
th{background:#e8eaef;font-size:.85em;text-transform:uppercase;letter-spacing:.04em}
small{color:#5a5f69}
.badge{display:inline-block;padding:.15em .7em;border-radius:1em;font-weight:700;color:#fff;text-transform:uppercase;font-size:.9em}
.badge.ok{background:#1e7d3a}.badge.silent,.badge.degraded{background:#b86e00}.badge.error,.badge.down{background:#b3261e}
.badge.unplugged{background:#6b1d1d}.badge.waiting{background:#6b7280}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin-top:1em}
.card{background:#fff;padding:.4em 1.2em;flex:1 1 16em;border-radius:.4em}
footer{padding:1em 1.5em;color:#5a5f69;font-size:.85em}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_devices_is_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
